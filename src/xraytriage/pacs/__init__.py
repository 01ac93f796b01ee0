"""Talking to a PACS: sending results (C-STORE, STOW-RS)."""
