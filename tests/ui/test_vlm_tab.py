"""The "Image + question" tab's handlers, with a tiny random SmolVLM in place of a hub model."""
from __future__ import annotations

import gradio as gr
import pytest

import tomviz
from tests import tiny
from tomviz.render.vlm import PANEL_GAP
from tomviz.ui import vlm_tab


@pytest.fixture(scope="module")
def loaded():
    model, processor = tiny.smolvlm()
    return tomviz.load(model, processor=processor, device="cpu")


def test_ask_and_redraw(loaded, monkeypatch):
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: loaded)
    photo = tiny.photo()
    out = vlm_tab.ask(photo, "what is in this image ?", "tiny", "llm", "fastv", 0.5, 3)
    assert out.overlay.size == out.attention.size == photo.size
    assert "unreduced" in out.answers and "exact match" in out.answers
    assert "the LLM receives 16" in out.counts and "from layer K 8" in out.counts
    tokens = out.session.result.answer_tokens
    assert [value for _, value in out.steps.choices] == list(range(len(tokens))) and out.steps.value == 0
    step_one = vlm_tab.show_step(1, out.session)
    assert step_one.size == photo.size and step_one.tobytes() != out.attention.tobytes()  # another token, another picture


def test_bad_input(loaded, monkeypatch):
    with pytest.raises(gr.Error, match="not a vision-language model"):
        vlm_tab.ask(tiny.photo(), "what ?", "dinov2-small", "boundary", "tome", 0.5, 3)
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: loaded)
    with pytest.raises(gr.Error, match="question is empty"):
        vlm_tab.ask(tiny.photo(), " ", "tiny", "boundary", "tome", 0.5, 3)
    with pytest.raises(gr.Error, match="works in the encoder"):
        vlm_tab.ask(tiny.photo(), "what ?", "tiny", "boundary", "pitome", 0.5, 3)
    with pytest.raises(gr.Error, match="ask a question first"):
        vlm_tab.show_step(0, None)


def test_onevision_draws_its_base_view_and_anyres_grid(monkeypatch):
    """OneVision's two tiles both show the whole photo (the anyres crops form one unpadded grid): two panels."""
    model, processor = tiny.onevision()
    onevision = tomviz.load(model, processor=processor, device="cpu")
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: onevision)
    photo = tiny.photo().resize((80, 48))
    out = vlm_tab.ask(photo, "what ?", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "boundary", "tome", 0.5, 3)
    assert out.overlay.size == out.attention.size == (2 * photo.width + PANEL_GAP, photo.height)
    grids = out.session.result.stages["boundary"].meta["tile_grids"]
    assert grids[0] == [4, 4] and sum(r * c for r, c in grids) == out.session.result.token_counts["visual"]
    with pytest.raises(gr.Error, match="not equal tiles"):
        vlm_tab.ask(photo, "what ?", "onevision", "boundary", "downsample", 0.5, 3)


def test_method_list_follows_the_place():
    """Each place lists the registry's methods there (and the papers' presets); a place change keeps a method
    that runs there and otherwise picks the first."""
    from tomviz.merge import registry

    for place in ("encoder", "boundary", "llm"):
        names = [name for _, name in vlm_tab.method_choices(place)]
        assert set(registry.names(place)) <= set(names)
        assert all(name in registry.names(place) or name == "tinychart" for name in names)
    assert "tinychart" in [name for _, name in vlm_tab.method_choices("encoder")]
    assert "pitome" not in [name for _, name in vlm_tab.method_choices("boundary")]
    assert [name for _, name in vlm_tab.method_choices("llm")] == ["fastv", "aim", "mustdrop"]
    assert vlm_tab.update_methods("boundary", "tome").value == "tome"
    assert vlm_tab.update_methods("llm", "tome").value == "fastv"


def test_preset_and_mismatches(loaded, monkeypatch):
    method, ratio, note = vlm_tab.resolve_method("encoder", "tinychart", 0.1)
    assert method == "tome" and abs(ratio - (1 - 732 / 2916)) < 1e-9 and "r = 84" in note
    with pytest.raises(ValueError, match="preset in the encoder"):
        vlm_tab.resolve_method("boundary", "tinychart", 0.5)
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: loaded)
    with pytest.raises(gr.Error, match="inside the LLM"):
        vlm_tab.ask(tiny.photo(), "what ?", "tiny", "llm", "tome", 0.5, 3)
    out = vlm_tab.ask(tiny.photo(), "what ?", "tiny", "encoder", "tinychart", 0.1, 2)
    assert out.session.result.reduction.method == "tome" and "preset" in out.counts
    assert out.session.result.reduction.method_options == {"order": "score"}  # TinyChart's ToMe order
    out = vlm_tab.ask(tiny.photo(), "what ?", "tiny", "llm", "aim", 0.5, 2)
    assert "after each layer 16 → 14 → 12" in out.counts and "authors' schedule" in out.counts


def test_mustdrop_stages_one_after_the_other(monkeypatch):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model, processor = tiny.llava(image_size=48, patch=8, vision_layers=2, text_layers=16, tower="clip")
    llava = tomviz.load(model, processor=processor, device="cpu")
    smol_model, smol_processor = tiny.smolvlm(text_layers=16)
    smol = tomviz.load(smol_model, processor=smol_processor, device="cpu")
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: llava)
    assert "mustdrop" in [name for _, name in vlm_tab.method_choices("llm")]
    out = vlm_tab.ask(tiny.photo(), "what is in this image ?", "tiny", "llm", "mustdrop", 0.5, 2)
    text = out.counts
    order = [text.index(f"{n}. ") for n in (1, 2, 3, 4)]
    assert order == sorted(order) and "layer 14:" in text and "ratio only switches it on" in text
    assert "global 0.001, individual 0.001" in text and "64 (0.011, 0.01)" in text  # which thresholds give which count
    monkeypatch.setattr(vlm_tab.tomviz, "load", lambda name, untrusted=False: smol)
    with pytest.raises(gr.Error, match="no CLS token that its projector drops"):  # SmolVLM: refused, clearly
        vlm_tab.ask(tiny.photo(), "what ?", "tiny", "llm", "mustdrop", 0.5, 2)
