"""Where and how much to reduce the visual tokens, for one call (never stored on the model)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PLACES = ("none", "encoder", "boundary", "llm")


@dataclass
class Reduction:
    """Where and how much to reduce, for one call (never stored on the model)."""

    place: str = "none"  # "none" | "encoder" | "boundary" | "llm"
    method: str = "tome"  # encoder: a tomviz.METHODS name; boundary: tomviz.merge.visual; llm: "fastv"
    ratio: float = 0.0  # fraction of the visual tokens removed (encoder: of the patch tokens, by the last layer)
    schedule: str = "constant"  # encoder: how the ratio spreads over the layers ("constant" | "decreasing")
    prop_attn: bool = True  # log(size) bias for merged tokens (encoder attention; the LLM's attention at the boundary)
    fastv_layer: int = 2  # K for FastV: layers K.. see only the kept visual tokens
    seed: int = 0  # random selection
    vtu: bool = False  # DyMU's virtual token unmerging in the LLM (merged tokens; replaces the log-size bias)
    method_options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.place not in PLACES:
            raise ValueError(f"unknown place {self.place!r}: choose one of {', '.join(PLACES)}")
        if not 0.0 <= self.ratio <= 0.95:
            raise ValueError(f"ratio {self.ratio} is outside 0..0.95")
        if self.place == "llm" and self.method != "fastv":
            raise ValueError(f"inside the LLM the method is fastv, not {self.method!r}")
        if self.place == "boundary" and self.method == "fastv":
            raise ValueError("fastv works inside the LLM: use place='llm'")
        if self.vtu and self.place not in ("boundary", "encoder"):
            raise ValueError(f"virtual token unmerging expands merged tokens: use it at the boundary or the encoder, not {self.place!r}")
