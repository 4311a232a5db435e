"""The Scores tab: Banzhaf values and interactions of merged tokens, and CLIP image × text (HBI).

Handlers are module-level functions (testable without a browser); the estimates themselves are
:mod:`tomviz.score_analysis`. A run keeps its :class:`~tomviz.score_analysis.ScoreSession` (numpy results +
the small photo) in ``gr.State``, so the top-k control re-renders without running the model again.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import gradio as gr
from PIL import Image

import tomviz
from tomviz import score_analysis
from tomviz.ratio_grid import foreground
from tomviz.render import scores as render
from tomviz.render.overlay import heatmap_overlay
from tomviz.score_analysis import ScoreSession
from tomviz.scores.banzhaf import BanzhafResult
from tomviz.ui.common import (DEFAULT_MODEL, EXAMPLE_IMAGES, IMAGE_MODELS, MAX_RATIO, MAX_SEED, TEXT_MODELS, PromptBox, outputs_type,
                              session_state, user_errors)
from tomviz.ui.examples import computed_once, own_copy
from tomviz.ui.guards import ImageFile, escape_markdown
from tomviz.ui.server import HEAVY

CLIP_MODEL = "openai/clip-vit-base-patch32"
SAMPLES = (64, 4096, 512)  # min, max, default coalitions per estimate
PAIR_HEADERS = ["player", "player", "interaction", "s.e."]
HBI_HEADERS = ["image group", "word", "interaction", "s.e."]
HUB_NOTE = (
    "CLIP's weights come from the Hugging Face hub (e.g. `openai/clip-vit-base-patch32`). This works on "
    "Hugging Face Spaces and on any machine with hub access; where the hub cannot be reached, this section "
    "says so and the rest of the app keeps working."
)


def __getattr__(name: str) -> Any:
    """``compute_banzhaf`` and ``compute_hbi`` moved to :mod:`tomviz.score_analysis` (the old names warn)."""
    if name in ("compute_banzhaf", "compute_hbi"):
        warnings.warn(f"tomviz.ui.scores_tab.{name} moved to tomviz.score_analysis.{name}; the old name will be "
                      "removed in tomviz 0.2.0", DeprecationWarning, stacklevel=2)
        return getattr(score_analysis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _progress_callback(progress: Any) -> Callable[[float, str], None]:
    return lambda fraction, message: progress(fraction, desc=f"Estimating: {message}")


class BanzhafViews(NamedTuple):
    """What a Banzhaf estimate shows, one field per output component (wired in this order)."""

    heat: Image.Image | None  # Banzhaf value over the image (image models)
    tokens: list | None  # value over the prompt's tokens (text models)
    values: Any  # plotly bars, value per group
    matrix: Any  # plotly interaction matrix
    pairs_img: Image.Image | None  # strongest pairs drawn on the image
    pairs: list[list[Any]] | None  # top-pairs table rows (``PAIR_HEADERS``)
    summary: str
    rollout: Image.Image | None  # CLS attention rollout over the image


# What ``score_banzhaf`` returns: the session, then :class:`BanzhafViews`' fields.
BanzhafOutputs = outputs_type("BanzhafOutputs", BanzhafViews, first=[("session", "ScoreSession | None")])


def banzhaf_views(session: ScoreSession, top_k: int = 8) -> BanzhafViews:
    """Every Banzhaf view of ``session``, with the ``top_k`` strongest pairs."""
    b = session.result
    names = render.group_labels(b.trace, b.layer, b.groups)
    pairs = b.top_pairs(int(top_k))
    heat = pairs_img = tokens = roll = None
    if session.rollout is not None and session.image is not None:
        roll = heatmap_overlay(session.image, session.rollout.reshape(-1), session.rollout.shape)
    if session.image is not None:
        heat = render.value_overlay(session.image, b.to_grid())
        pairs_img = render.pairs_overlay(session.image, b.trace, b.layer, b.groups, pairs)
    elif b.trace.meta.get("tokens"):
        tokens = render.token_values(b.trace.meta["tokens"], b.to_tokens())
    how = "exact (all 2ⁿ coalitions)" if b.exact else f"MSR, {b.samples} sampled coalitions, seed {b.seed}"
    summary = (
        f"**{b.num_groups} players**: the groups after layer {b.layer + 1} (CLS excluded). **Target**: {b.target}. "
        f"**Estimate**: {how}. Value with every group present: {b.full_value:.4f}; with none: {b.empty_value:.4f}; "
        f"sum of values: {b.values.sum():.4f}; median s.e.: {float(sorted(b.stderr)[len(b.stderr) // 2]):.4f}."
    )
    return BanzhafViews(
        heat=heat, tokens=tokens,
        values=render.values_figure(b.values, b.stderr, names, f"Banzhaf value per group (layer {b.layer + 1})"),
        matrix=render.interaction_figure(b.interactions, names, stderr=b.interactions_stderr), pairs_img=pairs_img,
        pairs=render.pairs_rows(pairs, names, stderr=b.interactions_stderr), summary=summary, rollout=roll,
    )


def score_banzhaf(model: str, image: Any, text: str | None, ratio: float = 0.9, layer: float = 11,
                  samples: float = 512, exact: bool = False, seed: float = 0, top_k: float = 8,
                  progress: gr.Progress = gr.Progress()) -> BanzhafOutputs:
    """Estimate Banzhaf values (with a progress bar). API: ``/score_banzhaf``."""
    with user_errors("estimate Banzhaf values"):
        session = score_analysis.compute_banzhaf(model or DEFAULT_MODEL["image"], image, text, ratio, layer, int(samples),
                                                 exact, int(seed), _progress_callback(progress))
        return BanzhafOutputs(session, *banzhaf_views(session, int(top_k)))


EMPTY_BANZHAF_VIEWS = BanzhafViews(None, None, None, None, None, None, "", None)


@computed_once
def example_banzhaf() -> BanzhafOutputs:
    """The estimate the tab opens on: the controls' defaults (the embedded image model, the first example
    photo, ratio 0.9, groups after layer 11, 512 coalitions, seed 0), once per process."""
    return score_banzhaf(DEFAULT_MODEL["image"], EXAMPLE_IMAGES[0], None, 0.9, 11, SAMPLES[2], False, 0, 8)


def open_banzhaf_example() -> BanzhafOutputs:
    """Page load: :func:`example_banzhaf` (the visitor's own copy of its session); left as is without examples."""
    if not EXAMPLE_IMAGES:
        return BanzhafOutputs(*(gr.skip() for _ in BanzhafOutputs._fields))
    with user_errors("show the example estimate"):
        out = example_banzhaf()
        return out._replace(session=own_copy(out.session))


def rerender_banzhaf(top_k: float, session: ScoreSession | None) -> BanzhafViews:
    """The views again with another number of top pairs (no model)."""
    if session is None or not isinstance(session.result, BanzhafResult):
        return EMPTY_BANZHAF_VIEWS
    return banzhaf_views(session, int(top_k))


# --- CLIP image + text ---------------------------------------------------------------------
def hub_message(model: str, err: Exception) -> str:
    return (
        f"**Cannot load {escape_markdown(model)}**: {escape_markdown(str(err), 400)}\n\n"
        "The Hugging Face hub cannot be reached from this machine (or the id is wrong), so the Image + Text "
        "section cannot run here. It runs on Hugging Face Spaces or anywhere with hub access."
    )


class HBIViews(NamedTuple):
    """What an image × text estimate shows, one field per output component (wired in this order)."""

    lines: Image.Image | None  # region–word lines
    cross: Any  # plotly group × word heatmap
    words: list | None  # the words' values (HighlightedText)
    heat: Image.Image | None  # the groups' values over the image
    pairs: list[list[Any]] | None  # top region–word pairs (``HBI_HEADERS``)
    summary: str


# What ``score_hbi`` returns: the session, then :class:`HBIViews`' fields.
HBIOutputs = outputs_type("HBIOutputs", HBIViews, first=[("session", "ScoreSession | None")])


def hbi_views(session: ScoreSession, top_k: int = 8) -> HBIViews:
    """Every image × text view of ``session``, with the ``top_k`` strongest group × word pairs."""
    h = session.result
    names = render.group_labels(h.trace, h.layer, h.groups)
    pairs = h.top_pairs(int(top_k))
    summary = (f"**{h.num_groups} image groups** (after layer {h.layer + 1}) and **{len(h.words)} words** in one game. "
               f"**Target**: {h.target}; all present {h.full_value:.4f}, none {h.empty_value:.4f}; {h.samples} coalitions.")
    return HBIViews(
        lines=render.hbi_lines(session.image, h.trace, h.layer, h.groups, h.words, pairs),
        cross=render.interaction_figure(h.cross, names, h.words, stderr=h.cross_stderr, title="Image group × word interaction"),
        words=render.token_values(h.words, h.word_values), heat=render.value_overlay(session.image, h.group_grid()),
        pairs=render.pairs_rows(pairs, names, h.words, stderr=h.cross_stderr), summary=summary,
    )


def score_hbi(model: str, image: Any, text: str, ratio: float = 0.5, layer: float = 11, samples: float = 512,
              seed: float = 0, top_k: float = 8, progress: gr.Progress = gr.Progress()) -> HBIOutputs:
    """CLIP image × text interaction. API: ``/score_hbi``. Says plainly when the hub cannot be reached."""
    model = (model or CLIP_MODEL).strip()
    try:
        with user_errors("score image × text"):
            session = score_analysis.compute_hbi(model, image, text, ratio, layer, int(samples), False, int(seed),
                                                 _progress_callback(progress))
    except gr.Error as err:
        cause = err.__cause__
        if isinstance(cause, tomviz.ModelLoadError):
            return HBIOutputs(None, None, None, None, None, None, hub_message(model, cause))
        raise
    return HBIOutputs(session, *hbi_views(session, int(top_k)))


# --- layout and wiring ---------------------------------------------------------------------
def build_scores_tab() -> None:
    """Lay out the Scores tab inside the current ``gr.Tab`` and wire its events."""
    build_banzhaf_section()
    build_hbi_section()


def build_banzhaf_section() -> None:
    """Banzhaf values of one model's merged groups: controls, views, events."""
    session = session_state()
    gr.Markdown(
        "**Banzhaf values of merged tokens.** The players are the groups after the chosen layer (CLS excluded). "
        "A coalition runs the remaining layers with only its groups present, sizes kept; the value is the predicted "
        "class's logit (classifiers) or the cosine similarity to the unmerged embedding. Red helps, blue hurts."
    )
    with gr.Row():
        with gr.Column(scale=4):
            model = gr.Dropdown(IMAGE_MODELS + TEXT_MODELS, value=DEFAULT_MODEL["image"], label="Model", allow_custom_value=True)
            image = ImageFile(value=EXAMPLE_IMAGES[0] if EXAMPLE_IMAGES else None, label="Image (image models)",
                             sources=["upload", "clipboard"], height=240)
            gr.Examples(EXAMPLE_IMAGES, inputs=image, label="Example photos")
            text = PromptBox(label="Prompt (text models)", value="The cat sat on the mat next to the dog.")
            ratio = gr.Slider(0.0, MAX_RATIO, value=0.9, step=0.05, label="Merge ratio")
            layer = gr.Slider(1, 11, value=11, step=1, label="Groups after layer",
                              info="Layers after it run for every coalition (at most the second-to-last layer)")
            samples = gr.Slider(SAMPLES[0], SAMPLES[1], value=SAMPLES[2], step=64, label="Samples (coalitions)")
            with gr.Row():
                exact = gr.Checkbox(False, label="Exact (≤ 12 groups)")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            top_k = gr.Slider(1, 30, value=8, step=1, label="Top pairs")
            run_btn = gr.Button("Estimate", variant="primary")
        with gr.Column(scale=7):
            summary = gr.Markdown(elem_id="banzhaf-summary")
            with gr.Row():
                heat = gr.Image(label="Banzhaf value over the image", format="png", interactive=False, height=300,
                                elem_id="banzhaf-heat")
                pairs_img = gr.Image(label="Strongest interacting pairs", format="png", interactive=False, height=300)
                rollout = gr.Image(label="Attention rollout through the merges (CLS)", format="png", interactive=False,
                                   height=300)
            tokens = gr.HighlightedText(label="Banzhaf value over the prompt's tokens", show_legend=False)
            values = gr.Plot(label="Values")
            matrix = gr.Plot(label="Interaction matrix (hover)")
            pairs = gr.Dataframe(headers=PAIR_HEADERS, label="Top pairs", interactive=False)

    banzhaf_components = dict(session=session, heat=heat, tokens=tokens, values=values, matrix=matrix,
                              pairs_img=pairs_img, pairs=pairs, summary=summary, rollout=rollout)
    run_btn.click(
        foreground(score_banzhaf), inputs=[model, image, text, ratio, layer, samples, exact, seed, top_k],
        outputs=[banzhaf_components[name] for name in BanzhafOutputs._fields], api_name="score_banzhaf", **HEAVY,
    )
    gr.on(None, open_banzhaf_example, None, [banzhaf_components[name] for name in BanzhafOutputs._fields],
          api_name="open_banzhaf_example", api_visibility="private", queue=False)  # page load: the example's estimate
    top_k.release(rerender_banzhaf, inputs=[top_k, session], outputs=[banzhaf_components[name] for name in BanzhafViews._fields],
                  show_progress="hidden")


def build_hbi_section() -> None:
    """CLIP image groups × words (HBI): controls, views, events."""
    gr.Markdown("## Image + Text (CLIP)\n" + HUB_NOTE)
    hbi_session = session_state()
    with gr.Row():
        with gr.Column(scale=4):
            clip_model = PromptBox(CLIP_MODEL, label="CLIP model (Hugging Face id)")
            clip_image = ImageFile(value=EXAMPLE_IMAGES[0] if EXAMPLE_IMAGES else None, label="Image",
                                  sources=["upload", "clipboard"], height=240)
            gr.Examples(EXAMPLE_IMAGES, inputs=clip_image, label="Example photos")
            prompt = PromptBox("a cat sleeping on a sofa", label="Prompt")
            clip_ratio = gr.Slider(0.0, MAX_RATIO, value=0.9, step=0.05, label="Merge ratio")
            clip_layer = gr.Slider(1, 11, value=11, step=1, label="Image groups after layer")
            clip_samples = gr.Slider(SAMPLES[0], SAMPLES[1], value=SAMPLES[2], step=64, label="Samples (coalitions)")
            clip_seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED)
            clip_top = gr.Slider(1, 30, value=8, step=1, label="Top pairs")
            hbi_btn = gr.Button("Score image × text", variant="primary")
        with gr.Column(scale=7):
            hbi_summary = gr.Markdown(elem_id="hbi-summary")
            lines = gr.Image(label="Strongest region–word pairs (red +, blue −)", format="png", interactive=False)
            with gr.Row():
                group_heat = gr.Image(label="Image groups' values", format="png", interactive=False, height=280)
                word_values = gr.HighlightedText(label="Words' values", show_legend=False)
            cross = gr.Plot(label="Group × word interaction (hover)")
            hbi_pairs = gr.Dataframe(headers=HBI_HEADERS, label="Top region–word pairs", interactive=False)

    hbi_components = dict(session=hbi_session, lines=lines, cross=cross, words=word_values, heat=group_heat,
                          pairs=hbi_pairs, summary=hbi_summary)
    hbi_btn.click(
        foreground(score_hbi), inputs=[clip_model, clip_image, prompt, clip_ratio, clip_layer, clip_samples, clip_seed, clip_top],
        outputs=[hbi_components[name] for name in HBIOutputs._fields], api_name="score_hbi", **HEAVY,
    )
