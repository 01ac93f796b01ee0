"""xraytriage: chest X-ray classification with subgroup miss rates in front of the user."""

__version__ = "0.1.0"
