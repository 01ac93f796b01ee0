"""Network construction and the single-file model bundle."""

from xraytriage.models.bundle import Bundle, load_bundle, save_bundle
from xraytriage.models.factory import build_model

__all__ = ["Bundle", "build_model", "load_bundle", "save_bundle"]
