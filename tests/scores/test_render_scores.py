"""Score pictures: PIL images and plotly figures of the right sizes, no gradio."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tomviz
from tomviz.render import scores as render
from tomviz.scores.hbi import Words, hbi

def test_render_banzhaf_and_hbi(clip):
    torch.manual_seed(5)
    res = tomviz.inspect(clip, torch.randn(1, 3, 32, 32), r=[4, 3, 0, 0], keep_hidden=True)
    photo = Image.new("RGB", (64, 48), (120, 130, 140))
    b = res.banzhaf(1, samples=64)
    names = render.group_labels(b.trace, b.layer, b.groups)
    assert len(names) == b.num_groups
    over = render.value_overlay(photo, b.to_grid())
    assert over.size == photo.size
    assert render.values_figure(b.values, b.stderr, names, "v").data[0].type == "bar"
    fig = render.interaction_figure(b.interactions, names, stderr=b.interactions_stderr)
    assert np.asarray(fig.data[0].z).shape == (b.num_groups, b.num_groups)
    pairs = b.top_pairs(3)
    assert len(render.pairs_rows(pairs, names, stderr=b.interactions_stderr)) == 3
    assert render.pairs_overlay(photo, b.trace, b.layer, b.groups, pairs).size == photo.size

    words = Words(input_ids=torch.tensor([[0, 5, 6, 1]]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                  words=["ab", "c"], positions=[[1, 2], [3]])
    h = hbi(res, words, layer=1, samples=64)
    lines = render.hbi_lines(photo, h.trace, h.layer, h.groups, h.words, h.top_pairs(4))
    assert lines.size[0] > photo.size[0]
    assert render.interaction_figure(h.cross, names, h.words).data[0].type == "heatmap"

def test_token_values_and_no_gradio():
    out = render.token_values(["[CLS]", "the", "##m", "dog"], np.array([np.nan, 0.5, -1.0, 0.25]))
    assert out[0] == ("[CLS]", None) and out[2] == ("m", -1.0) and out[1][1] == 0.5
    source = Path(render.__file__).read_text()
    assert "import gradio" not in source
