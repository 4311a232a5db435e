"""Where and how much to reduce the visual tokens, for one call (never stored on the model)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tomviz.merge.checks import PLACES as REDUCING_PLACES, check_place, check_ratio
from tomviz.merge.request import MergeRequest

PLACES = ("none",) + REDUCING_PLACES


@dataclass
class Reduction:
    """Where and how much to reduce, for one call (never stored on the model): a :class:`MergeRequest`
    (``request``) plus what only a vision-language model has (FastV's layer, the seed, VTU)."""

    place: str = "none"  # "none" | "encoder" | "boundary" | "llm"
    method: str = "tome"  # a tomviz.merge.registry name that runs at ``place`` (llm: "fastv")
    ratio: float = 0.0  # fraction of the visual tokens removed (encoder: of the patch tokens, by the last layer)
    schedule: str = "constant"  # encoder: how the ratio spreads over the layers ("constant" | "decreasing")
    prop_attn: bool = True  # log(size) bias for merged tokens (encoder attention; the LLM's attention at the boundary)
    fastv_layer: int = 2  # K for FastV: layers K.. see only the kept visual tokens
    seed: int = 0  # random selection
    vtu: bool = False  # DyMU's virtual token unmerging in the LLM (merged tokens; replaces the log-size bias)
    method_options: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> MergeRequest:
        """The merge request at ``place`` (``"none"``: the encoder's, which removes nothing)."""
        return MergeRequest(method=self.method, method_options=self.method_options, ratio=self.ratio,
                            schedule=self.schedule, prop_attn=self.prop_attn,
                            place="encoder" if self.place == "none" else self.place)

    def check(self) -> None:
        check_place(self.place, PLACES)
        if self.place == "none":
            check_ratio(self.ratio)
        else:
            self.request.check()
        if self.vtu and self.place not in ("boundary", "encoder"):
            raise ValueError(f"virtual token unmerging expands merged tokens: use it at the boundary or the encoder, not {self.place!r}")
