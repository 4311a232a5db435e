"""Thin adapters, one per architecture family, plus model loading."""
from tomviz.models import bert, clip, dinov2, vit  # noqa: F401  (registers the adapters)
from tomviz.models import llava, siglip, smolvlm  # noqa: F401  (vision-language families)
from tomviz.models.patching import ADAPTERS, UnsupportedModelError, apply, remove

__all__ = ["ADAPTERS", "UnsupportedModelError", "apply", "remove"]
