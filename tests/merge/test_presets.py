"""The TinyChart preset (X-PLUG/mPLUG-DocOwl @f91a768, ``TinyChart/scripts/vit_add_tome.py``: 768 px,
``tome_r`` 84 in each of SigLIP's 26 used layers) and its token counts."""
from __future__ import annotations

import pytest

from tomviz.merge import METHODS
from tomviz.merge.presets import PRESETS, TINYCHART, constant_r_counts, tinychart_ratio


def test_tinychart_is_tome_at_the_encoder():
    assert PRESETS["tinychart"] is TINYCHART
    request = TINYCHART.request().check()
    assert (request.method, request.place, request.r, request.schedule, request.prop_attn) == ("tome", "encoder", 84, "constant", True)
    assert TINYCHART.request() is not request  # a fresh request per call
    assert request.method in METHODS and TINYCHART.num_protected == 0
    assert (TINYCHART.image_size // TINYCHART.patch_size) ** 2 == 2916
    # ToMe without a class token keeps the unmerged A tokens in best-match order
    assert request.method_options == {"order": "score"} and request.build_method().order == "score"
    request.method_options["order"] = "position"
    assert TINYCHART.request().method_options == {"order": "score"}  # the preset's options are not shared


def test_counts():
    counts = constant_r_counts(2916, 84, 26)
    assert counts[:3] == [2916, 2832, 2748] and counts[-1] == 2916 - 26 * 84 == 732
    assert tinychart_ratio() == pytest.approx(1 - 732 / 2916)
    assert constant_r_counts(10, 4, 3) == [10, 6, 3, 2]  # each step at most half
    assert constant_r_counts(11, 4, 2, num_protected=1) == [11, 7, 4]
