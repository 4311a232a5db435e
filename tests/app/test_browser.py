"""A real browser (Debian's chromium, headless, driven by Playwright for Python) against the app:
every one of the six tabs opens on a rendered result (screenshots artifacts/tab_*.png; Image + question: the
hub notice where the hub is out of reach); the ratio slider answers from the visitor's grid of ratios without
running the model; the merge animation downloads as an MP4 of layers + 1 frames; the page opens on an
inspected example; pick another, move the ratio slider, move the layer slider, upload a photo; the overlay
changes every time and no error shows.
The last screenshot is kept as artifacts/app_browser.png. Further tests: a shared link, a patch click (overlay and
cluster map) against the trace, the animation, a Text-tab token click."""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("TOMVIZ_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 180_000  # a loaded 2-core machine can take a while for the first model run

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
                                reason=f"no chromium at {CHROMIUM} (apt-get install -y chromium)")


@contextmanager
def _app_page(url: str, **page_options):
    """A fresh page of a headless Chromium on ``url``, once the Gradio app is in it; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(**page_options)
            page.goto(url)
            page.wait_for_selector("gradio-app")
            yield page
        finally:
            browser.close()


def _wait_for_new_src(page, selector: str, old: str | None) -> str:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        image = page.locator(selector)
        if image.count() and (src := image.first.get_attribute("src")) and src != old:
            return src
        page.wait_for_timeout(200)
    raise AssertionError(f"{selector} did not change from {old!r}")


def _wait_idle(page) -> None:
    """Wait until no component shows Gradio's "processing" or "queue" status."""
    page.wait_for_function("() => !/processing \\||queue: /.test(document.body.innerText)", timeout=TIMEOUT_MS)


def _errors_shown(page) -> list[str]:
    return [t for t in page.locator(".toast-body.error, [data-testid='toast-body'].error").all_inner_texts()]


def _drag_slider(page, label: str, value: float, minimum: float, maximum: float) -> None:
    """Press on the range input at its current value and release at ``value`` (fires 'release')."""
    slider = page.get_by_label(f"range slider for {label}")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    current = float(slider.input_value())
    x_of = lambda v: box["x"] + box["width"] * (v - minimum) / (maximum - minimum)  # noqa: E731
    y = box["y"] + box["height"] / 2
    page.mouse.move(x_of(current), y)
    page.mouse.down()
    page.mouse.move(x_of((current + value) / 2), y, steps=3)
    page.mouse.move(x_of(value), y, steps=3)
    page.mouse.up()


# Each tab, and what shows that it opened on a real result: a selector that must be visible in it.
TAB_RESULTS = [
    ("Image", ["#overlay img", ".run-chart img"]),
    ("Text", ["#text-groups .token", ".run-chart img"]),
    ("Scores", ["#banzhaf-heat img", "#banzhaf-summary p"]),
    ("Compare / Sweep", ["#compare-a img", "#compare-diff img", "#sweep-figure .js-plotly-plot"]),
    ("Benchmark", ["#bench-plot .js-plotly-plot"]),
]


def _visible(page, selector: str) -> None:
    """Wait until an element of ``selector`` is visible (a loaded picture: decoded, wider than 10 px)."""
    page.wait_for_function(
        """(s) => [...document.querySelectorAll(s)].some(e => e.offsetParent !== null
               && (e.tagName !== "IMG" || (e.complete && e.naturalWidth > 10)))""", arg=selector, timeout=TIMEOUT_MS)


def test_browser_every_tab_opens_on_a_result(app_url):
    """A fresh page: each of the six tabs shows a rendered picture or plot before any click (Image + question:
    the notice when this server cannot reach the hub); a screenshot of each in artifacts/."""
    from tomviz.ui.vlm_tab import hub_notice

    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with _app_page(app_url, viewport={"width": 1400, "height": 1000}) as page:
        for tab, selectors in TAB_RESULTS:
            page.get_by_role("tab", name=tab, exact=True).click()
            for selector in selectors:
                _visible(page, selector)
            _wait_idle(page)
            assert not _errors_shown(page), tab
            page.screenshot(path=str(artifacts / f"tab_{tab.split()[0].lower()}.png"), full_page=True)
        page.get_by_role("tab", name="Image + question", exact=True).click()
        if hub_notice():  # this server cannot load a VLM: the tab says so before any click
            page.wait_for_function("() => /cannot reach the Hugging Face hub/.test("
                                   "document.querySelector('#vlm-hub-notice')?.innerText || '')", timeout=TIMEOUT_MS)
        page.screenshot(path=str(artifacts / "tab_image_question.png"), full_page=True)
        assert not _errors_shown(page)


def _counted_model_runs(monkeypatch) -> list[float]:
    """The ratios of the model runs the Image and Text tabs make from now on (the server runs in this process)."""
    from tomviz.ui import lifecycle

    runs, real = [], lifecycle.analyse

    def counted(x, settings, *args, **kwargs):
        runs.append(settings.ratio)
        return real(x, settings, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "analyse", counted)
    return runs


def _image_grid_ready(known: set[str], timeout_s: float = TIMEOUT_MS / 1000):
    """The Image-tab grid of the page opened after ``known`` visitors, once every ratio is computed."""
    from tomviz.ratio_grid import GRIDS

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for visitor in set(GRIDS.visitors()) - known:
            grid = GRIDS.grid(visitor)
            if visitor.endswith(":image") and grid is not None and grid.ready:
                return grid
        time.sleep(0.2)
    raise AssertionError("no Image-tab grid became ready")


def test_browser_ratio_from_memory_and_mp4(app_url, monkeypatch):
    """Once the grid is ready, a ratio release redraws the overlay without a model run; the merge animation
    comes as a GIF and an MP4 whose frames are the input plus one per layer."""
    import av

    from tomviz.ratio_grid import GRIDS

    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    known = set(GRIDS.visitors())
    with _app_page(app_url, viewport={"width": 1400, "height": 1000}, accept_downloads=True) as page:
        first = _wait_for_new_src(page, "#overlay img", None)
        _wait_idle(page)
        grid = _image_grid_ready(known)
        assert not page.locator("#animation-file").is_visible()  # hidden until it holds something
        runs = _counted_model_runs(monkeypatch)
        _drag_slider(page, "Merge ratio", 0.8, 0.0, 0.95)
        moved = _wait_for_new_src(page, "#overlay img", first)
        _wait_idle(page)
        ratio = float(page.get_by_label("range slider for Merge ratio").input_value())
        assert ratio != 0.5 and round(ratio, 6) in grid.results and runs == []  # from memory: no model run
        assert moved != first and not _errors_shown(page)
        assert moved.startswith("data:image/jpeg;base64,")  # the pictures came inside the answer, no file to fetch
        page.wait_for_function("(r) => new URL(window.location.href).searchParams.get('ratio') == r", arg=f"{ratio:g}",
                               timeout=TIMEOUT_MS)  # the link (and the page's URL) follow, from the same answer
        link = page.locator("#share-link textarea, #share-link input").first.input_value()
        assert link == page.url

        page.locator("#animate").click()
        mp4 = "#animation-file a[download$='.mp4']"
        page.wait_for_selector(mp4, timeout=TIMEOUT_MS)
        assert page.locator("#animation-file a[download$='.gif']").count() == 1  # beside the GIF
        with page.expect_download(timeout=TIMEOUT_MS) as download:
            page.locator(mp4).first.click()
        path = artifacts / "merge_animation.mp4"
        download.value.save_as(str(path))
        with av.open(str(path)) as video:
            frames = sum(1 for _ in video.decode(video=0))
        assert frames == grid.results[round(ratio, 6)].trace.num_layers + 1
        page.screenshot(path=str(artifacts / "app_mp4.png"), full_page=True)
        assert not _errors_shown(page)


def test_browser_example_slider_upload(app_url):
    from urllib.parse import parse_qs, urlsplit

    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with _app_page(app_url, viewport={"width": 1400, "height": 1700}) as page:
        initial = _wait_for_new_src(page, "#overlay img", None)  # the first example, inspected on page load
        page.locator("img[src*='grace_hopper']").first.click(timeout=TIMEOUT_MS)  # pick another example
        first = _wait_for_new_src(page, "#overlay img", initial)
        assert not _errors_shown(page)

        _drag_slider(page, "Merge ratio", 0.9, 0.0, 0.95)
        assert float(page.get_by_label("range slider for Merge ratio").input_value()) > 0.7
        second = _wait_for_new_src(page, "#overlay img", first)
        assert second != first and not _errors_shown(page)
        _wait_idle(page)
        page.screenshot(path=str(artifacts / "app_browser_slider.png"), full_page=True)

        _drag_slider(page, "Layer", 11, 1, 12)  # redraw from the stored trace (no model run)
        _wait_for_new_src(page, "#overlay img", second)
        _wait_idle(page)
        page.wait_for_timeout(500)  # let the last redraw of the drag land
        assert not _errors_shown(page)
        link = page.locator("#share-link textarea, #share-link input").first.input_value()
        query = parse_qs(urlsplit(link).query)  # the link (and the page's URL) follow the scrub
        assert int(query["layer"][0]) == int(float(page.get_by_label("range slider for Layer").input_value()))
        assert float(query["ratio"][0]) == float(page.get_by_label("range slider for Merge ratio").input_value())
        assert page.url == link

        strip = page.locator("#layer-strip img").first.get_attribute("src")  # changes only on model runs
        page.locator("input[type=file]").first.set_input_files(str(ROOT / "assets" / "coffee.png"))  # upload
        _wait_for_new_src(page, "#layer-strip img", strip)
        _wait_idle(page)
        assert not _errors_shown(page)
        page.screenshot(path=str(artifacts / "app_browser.png"), full_page=True)


SHARED_QUERY = "?tab=image&model=dinov2-small&method=tome&schedule=decreasing&ratio=0.7&layer=9&example=coffee.png"


def _content_point(page, selector: str, fx: float, fy: float) -> dict:
    """The point at fraction (fx, fy) of the picture shown by ``selector`` (object-fit keeps its aspect)."""
    return page.locator(selector).first.evaluate(
        """(img, [fx, fy]) => {
            const s = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight, 1);
            const w = img.naturalWidth * s, h = img.naturalHeight * s;
            return {x: (img.clientWidth - w) / 2 + fx * w, y: (img.clientHeight - h) / 2 + fy * h};
        }""", [fx, fy])


def _as_jpeg(picture):
    """``picture`` as the page gets it (gr.Image(format="jpeg") saves with PIL's defaults), as a float array."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    picture.save(buffer, "JPEG")
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=float)


def test_browser_shared_link_lineage_animation(app_url):
    """Open a shared link (controls and picture as the link says), click a patch (its group highlighted in
    every layer of the strip, checked against the trace), download the merge animation (layers + 1 frames)."""
    import io

    import numpy as np
    from PIL import Image

    from tomviz.render.groups import HIGHLIGHT, map_layout, strip_layout
    from tomviz.analysis import Settings, analyse
    from tomviz.ui.image_tab import layer_views

    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    # what the link asks for, computed here without the browser
    expected = analyse(str(ROOT / "assets" / "coffee.png"), Settings(ratio=0.7, schedule="decreasing"), modality="image")
    trace = expected.trace
    with _app_page(app_url + SHARED_QUERY, viewport={"width": 1400, "height": 1000}, accept_downloads=True) as page:
        link = page.locator("#share-link textarea, #share-link input").first
        page.wait_for_function("() => { const e = document.querySelector('#share-link textarea, #share-link input');"
                               " return e && e.value.startsWith('http'); }", timeout=TIMEOUT_MS)
        _wait_idle(page)
        assert link.input_value().endswith(SHARED_QUERY) and page.url.endswith(SHARED_QUERY)
        assert float(page.get_by_label("range slider for Merge ratio").input_value()) == 0.7
        assert float(page.get_by_label("range slider for Layer").input_value()) == 9
        assert page.get_by_label("decreasing").is_checked()
        assert not _errors_shown(page)
        shown = Image.open(io.BytesIO(page.request.get(page.locator("#overlay img").first.get_attribute("src")).body()))
        want, other = (_as_jpeg(layer_views(expected, l, 0.8)[0]) for l in (8, 2))  # layer 9 (shown), layer 3
        got = np.asarray(shown.convert("RGB"), dtype=float)
        assert got.shape == want.shape
        near, far = np.abs(got - want).mean(), np.abs(got - other).mean()
        assert near < 1 and far > 3, (near, far)  # the same JPEG (up to the encoder), not another layer's
        page.screenshot(path=str(artifacts / "app_shared_link.png"), full_page=True)

        # click a patch of a large final group
        last = trace.num_layers - 1
        sizes = trace.sizes(last)[trace.groups(last)]  # [N0]
        protected, (rows, cols) = int(trace.meta["num_protected"]), trace.meta["patch_grid"]
        token = int(np.nonzero(sizes[protected:] >= 4)[0][len(np.nonzero(sizes[protected:] >= 4)[0]) // 2]) + protected
        row, col = divmod(token - protected, cols)
        strip_src = page.locator("#layer-strip img").first.get_attribute("src")
        page.locator("#overlay img").first.click(position=_content_point(page, "#overlay img", (col + 0.5) / cols,
                                                                       (row + 0.5) / rows))
        strip_src = _wait_for_new_src(page, "#layer-strip img", strip_src)
        strip = np.asarray(Image.open(io.BytesIO(page.request.get(strip_src).body())).convert("RGB"), dtype=int)
        layout = strip_layout(expected.image.size, trace.num_layers)
        assert strip.shape[:2] == layout.size[::-1]
        wrong = []
        for l in range(trace.num_layers):
            groups = trace.groups(l)
            for t in range(protected, trace.num_input_tokens):
                r, c = divmod(t - protected, cols)
                y = layout.y(l) + int((r + 0.5) * layout.tile_h / rows)
                x = layout.x(l) + int((c + 0.5) * layout.tile_w / cols)
                red, green, blue = strip[y, x]
                magenta = red - green > 50 and blue - green > 50
                if magenta != (groups[t] == groups[token]):
                    wrong.append((l + 1, t))
        assert not wrong, f"strip highlight differs from the trace at (layer, token) {wrong[:10]}"
        members = int((trace.groups(last) == trace.groups(last)[token]).sum())
        assert f"group of {members} patches" in page.locator("#lineage").inner_text()
        page.screenshot(path=str(artifacts / "app_lineage.png"), full_page=True)

        # click a patch of another group in the cluster map: that group in magenta there, checked against the trace
        shown_layer = 8  # the link's layer 9
        groups = trace.groups(shown_layer)
        final = trace.groups(last)
        other = next(t for t in range(trace.num_input_tokens - 1, protected - 1, -1)  # merged, and apart to the end
                     if final[t] != final[token] and (groups == groups[t]).sum() >= 2)
        row, col = divmod(other - protected, cols)
        grid = map_layout(trace)
        map_src = page.locator("#cluster-map img").first.get_attribute("src")
        page.locator("#cluster-map img").first.click(position=_content_point(
            page, "#cluster-map img", (col + 0.5) * grid.cell / grid.size[0], (row + 0.5) * grid.cell / grid.size[1]))
        map_src = _wait_for_new_src(page, "#cluster-map img", map_src)
        shown_map = np.asarray(Image.open(io.BytesIO(page.request.get(map_src).body())).convert("RGB"), dtype=int)
        assert shown_map.shape[:2] == grid.size[::-1]
        for t in range(protected, trace.num_input_tokens):
            r, c = divmod(t - protected, cols)
            cell = shown_map[int((r + 0.5) * grid.cell), int((c + 0.5) * grid.cell)]
            assert (cell.tolist() == list(HIGHLIGHT)) == (groups[t] == groups[other]), t
        _wait_idle(page)
        assert f"group of {int((final == final[other]).sum())} patches" in page.locator("#lineage").inner_text()
        page.screenshot(path=str(artifacts / "app_cluster_map_click.png"), full_page=True)

        page.locator("#animate").click()
        page.wait_for_selector("#animation-file a", timeout=TIMEOUT_MS)
        with page.expect_download(timeout=TIMEOUT_MS) as download:
            page.locator("#animation-file a").first.click()
        path = artifacts / "merge_animation.gif"
        download.value.save_as(str(path))
        with Image.open(path) as gif:
            assert gif.n_frames == trace.num_layers + 1
        page.screenshot(path=str(artifacts / "app_animation.png"), full_page=True)
        assert not _errors_shown(page)


TEXT_PROMPT = "The cat sat on the mat and the dog sat on the rug"


def test_browser_text_token_click_follows_its_group(app_url):
    """Open a Text-tab link, click a token of a merged group: exactly that group's tokens stay highlighted
    (checked against the trace) and the lineage panel describes it."""
    from urllib.parse import urlencode

    from tomviz.analysis import Settings, analyse

    expected = analyse(TEXT_PROMPT, Settings(model="minilm", ratio=0.5), modality="text")
    trace, layer = expected.trace, 5  # the link's layer 6
    groups, sizes = trace.groups(layer), trace.sizes(layer)
    token = next(t for t in range(1, trace.num_input_tokens) if sizes[groups[t]] >= 2)
    members = [t for t in range(trace.num_input_tokens) if groups[t] == groups[token]]
    query = urlencode(dict(tab="text", model="minilm", method="tome", schedule="constant", ratio=0.5, layer=6,
                           prompt=TEXT_PROMPT))
    with _app_page(f"{app_url}?{query}", viewport={"width": 1400, "height": 1000}) as page:
        spans = page.locator("#text-groups .token")
        page.wait_for_function(f"() => document.querySelectorAll('#text-groups .token').length === "
                               f"{trace.num_input_tokens}", timeout=TIMEOUT_MS)
        _wait_idle(page)
        # the run's follow-up (selection, lineage, link: no progress shown) ends with the full link in the box;
        # a click before it lands would be answered, then overwritten by the follow-up's "nothing selected"
        page.wait_for_function("() => /^http/.test(document.querySelector('#share-link-text textarea, "
                               "#share-link-text input').value)", timeout=TIMEOUT_MS)
        hint = page.locator("#text-lineage").inner_text()
        spans.nth(token).click()
        page.wait_for_function("(hint) => document.querySelector('#text-lineage').innerText !== hint", arg=hint,
                               timeout=TIMEOUT_MS)
        _wait_idle(page)
        highlighted = [i for i in range(spans.count()) if "highlighted" in (spans.nth(i).get_attribute("class") or "")]
        assert highlighted == members, (highlighted, members, page.locator("#text-lineage").inner_text())
        assert f"{len(members)} tokens" in page.locator("#text-lineage").inner_text()
        assert not _errors_shown(page)
        page.screenshot(path=str(ROOT / "artifacts" / "app_text_token_click.png"), full_page=True)


def test_browser_video_tab_world_holitom_strip_equals_the_trace(app_url):
    """The issue's check in a browser: the Video tab, world.mp4, HoliTom at 0.9; the strip the page shows is the
    one drawn from a local trace, pixel for pixel (PNG); a click on the black background selects a group that
    spans every frame."""
    import io

    import numpy as np
    from PIL import Image

    import tomviz
    from tomviz.inputs.video import example_clips
    from tomviz.render.video import frame_strip

    local = tomviz.inspect("dinov2-small", example_clips()["world.mp4"], method="holitom", ratio=0.9)
    expected = np.asarray(frame_strip(local.video.frames, local.trace))
    with _app_page(app_url, viewport={"width": 1600, "height": 1400}) as page:
        _wait_for_new_src(page, "#overlay img", None)  # the page's own load events first (they pick the tab)
        _wait_idle(page)
        page.get_by_role("tab", name="Video").click()
        page.locator("#video-run").click()
        src = _wait_for_new_src(page, "#video-strip img", None)
        shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
        assert np.array_equal(shown, expected)
        _wait_idle(page)
        strip = page.locator("#video-strip img").first
        strip.scroll_into_view_if_needed()
        page.wait_for_function("() => { const i = document.querySelector('#video-strip img');"
                               " return i && i.complete && i.naturalWidth > 0 && i.clientWidth > 0; }", timeout=TIMEOUT_MS)
        from tomviz.render.video import strip_layout

        layout = strip_layout(local.video.frames)  # the middle of frame 0's top-left patch (not its edge: the
        left, top = layout.origin(0)  # page scales the picture, and a point on the edge may round off the frame)
        _, rows, cols = local.trace.frame_grid
        x, y = left + layout.tile[0] / cols / 2, top + layout.tile[1] / rows / 2
        point = _content_point(page, "#video-strip img", x / expected.shape[1], y / expected.shape[0])
        strip.click(position=point)  # frame 0, top-left: black background
        page.wait_for_function("() => /spanning/.test(document.querySelector('#video-lineage').innerText)",
                               timeout=TIMEOUT_MS)
        lineage = page.locator("#video-lineage").inner_text()
        assert "token (frame 0, row 1, col 1)" in lineage and "spanning 16 frame(s)" in lineage, lineage
        assert not _errors_shown(page)


def test_browser_video_link_restores_its_settings_and_runs(app_url):
    """A Video-tab link opens the Video tab with its example clip and settings, runs them (the strip equals a local
    trace's, pixel for pixel) and shows the same link; the upload never goes in a link."""
    import io
    from urllib.parse import parse_qsl, urlparse

    import numpy as np
    from PIL import Image

    import tomviz
    from tomviz.inputs.video import example_clips
    from tomviz.render.video import frame_strip

    query = "?tab=video&model=dinov2-small&method=fastvid&ratio=0.7&frames=8&tau=0.85&segments=3&example=muted_b.mp4"
    local = tomviz.inspect("dinov2-small", example_clips()["muted_b.mp4"], method="fastvid", ratio=0.7, num_frames=8,
                           method_options={"tau": 0.85, "segments": 3})
    expected = np.asarray(frame_strip(local.video.frames, local.trace))
    with _app_page(app_url + query, viewport={"width": 1600, "height": 1400}) as page:
        src = _wait_for_new_src(page, "#video-strip img", None)  # ran on page load, no click
        shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
        assert np.array_equal(shown, expected)
        page.wait_for_function("() => /example=muted_b/.test(document.querySelector('#share-link-video textarea').value)",
                               timeout=TIMEOUT_MS)
        link = page.locator("#share-link-video textarea").input_value()
        assert dict(parse_qsl(urlparse(link).query)) == dict(parse_qsl(query[1:]))
        assert page.get_by_role("tab", name="Video").get_attribute("aria-selected") == "true"
        assert not _errors_shown(page)
