"""Hyper-parameter search with Optuna: a search space of config keys, and a resumable study."""
