"""Thin adapters, one per architecture family, plus model loading."""
from tomviz.models import vit, dinov2, clip, bert  # noqa: F401, I001  (registers the adapters, in the order messages list them)
from tomviz.models import llava, qwen2_vl, siglip, smolvlm  # noqa: F401  (vision-language families)
from tomviz.models.patching import ADAPTERS, UnsupportedModelError, apply, remove

__all__ = ["ADAPTERS", "UnsupportedModelError", "apply", "remove"]
