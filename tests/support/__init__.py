"""Helpers the tests of several packages share: builders of bundles, scans, configs and prepared
datasets, and a real Orthanc started on free ports. Importable as ``support`` because pytest puts
tests/ (the root conftest's folder) on sys.path."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root
