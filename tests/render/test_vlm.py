"""Per-tile pictures of a VLM result (tomviz.render.vlm): each tile drawn on the part of the photo it shows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tiny
from tomviz import vlm
from tomviz.models.vlm import wrap
from tomviz.render.vlm import (PANEL_GAP, WHOLE, answer_attention_overlay, panel_image, reaches_llm_overlay,
                               tile_panels)
from tomviz.trace import LayerTrace, Trace


@pytest.fixture(scope="module")
def split_smolvlm():
    """A tiny SmolVLM whose processor splits a 2:1 photo into 1 x 2 crops of 64 px plus the global view."""
    torch.manual_seed(0)
    model, processor = tiny.smolvlm()  # 64 px tiles of 8 x 8 patches, pixel shuffle 2: 4 x 4 tokens per tile
    processor.image_processor.do_image_splitting = True
    processor.image_processor.size = {"longest_edge": 128}
    return wrap("tiny-smolvlm-split", model, processor)


def _wide_photo():
    return tiny.photo(80).resize((160, 80))


def test_split_image_gives_one_panel_per_tile(split_smolvlm):
    res = vlm.inspect_vlm(split_smolvlm, _wide_photo(), "what is in this image ?", place="boundary", method="tome",
                          ratio=0.5, max_new_tokens=2)
    boundary = res.stages["boundary"]
    assert boundary.meta["crop_grid"] == [1, 2] and boundary.meta["num_tiles"] == 3
    panels = tile_panels(boundary)
    assert [p.label for p in panels] == ["crop 1, 1", "crop 1, 2", "global view"]
    assert all(p.grid == (4, 4) for p in panels)
    assert [p.tokens for p in panels] == [slice(0, 16), slice(16, 32), slice(32, 48)]
    assert [p.box for p in panels] == [(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0), WHOLE]
    assert panel_image(res.inputs.image, panels[1]).size == (80, 80)  # the right half of the 160 x 80 photo
    picture = reaches_llm_overlay(res.inputs.image, boundary)
    assert picture.size == (2 * 160 + PANEL_GAP, 80)  # the crops in place, then the global view
    heat = answer_attention_overlay(res.inputs.image, boundary, res.answer_attention, 0)
    assert heat.size == picture.size


def _trace(meta: dict, groups: np.ndarray) -> Trace:
    layer = LayerTrace(source=groups.astype(np.int32), sizes=np.bincount(groups).astype(np.float32),
                       num_tokens_in=len(groups))
    return Trace(meta=meta, layers=[layer])


def test_each_crop_is_drawn_on_its_own_region():
    """Two crops side by side and a global view (one token each, 1 x 1 grids): the left crop's colour fills the
    left half of the first panel, the right crop's the right half; the global view is its own panel."""
    photo = np.zeros((40, 80, 3), dtype=np.uint8)
    photo[:, :40] = (200, 0, 0)
    photo[:, 40:] = (0, 0, 200)
    from PIL import Image

    trace = _trace({"token_grid": [1, 1], "num_tiles": 3, "crop_grid": [1, 2]}, np.arange(3))
    out = np.asarray(reaches_llm_overlay(Image.fromarray(photo), trace))
    assert out.shape == (40, 2 * 80 + PANEL_GAP, 3)
    left, right = out[20, 10], out[20, 70]
    assert left[0] > 150 and left[2] < 50 and right[2] > 150 and right[0] < 50  # each crop keeps its own mean colour
    whole = out[20, 80 + PANEL_GAP + 10]
    # the global view's one group has the whole photo's mean (100, 0, 100), blended 0.8 over a red pixel
    assert tuple(int(v) for v in whole) == (120, 0, 80)


def test_unsplit_and_unknown_layouts_show_the_whole_photo():
    one = tile_panels(_trace({"token_grid": [2, 2], "num_tiles": 1}, np.arange(4)))
    assert [(p.box, p.label) for p in one] == [(WHOLE, "whole image")]
    grids = tile_panels(_trace({"tile_grids": [[2, 2], [2, 3]], "token_grid": [1, 10], "num_tiles": 2}, np.arange(10)))
    assert [(p.grid, p.box) for p in grids] == [((2, 2), WHOLE), ((2, 3), WHOLE)]
    # a crop grid that does not match the tile count is not trusted
    odd = tile_panels(_trace({"token_grid": [1, 1], "num_tiles": 3, "crop_grid": [2, 2]}, np.arange(3)))
    assert all(p.box == WHOLE for p in odd)
