"""Manifests, splits, datasets, caching and augmentation."""
