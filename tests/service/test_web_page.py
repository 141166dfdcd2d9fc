"""The web page in a real browser: headless Debian Chromium driven by Playwright, against a real
gateway on loopback, a real Redis and a real ``megasr worker`` process.

The worker runs :class:`worker_engines.SteppedEngine` one tile per engine call: with the gate
closed, each tile waits for a token the test hands out, so the progress test moves the job
tile by tile exactly when it wants to; with the gate open a job takes a fraction of a second.
It also serves :class:`worker_engines.PickyEngine`, whose calls fail on a white tile: a job
that fails in the worker, for the error test.
Every wait is on a condition in the page (Playwright's waits), never a sleep.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from loopback import wait_until
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from service_support import API_KEYS, Gateway, WorkerProcess, worker_env
from system_packages import require

from megasr.engine_catalog import describe
from megasr.queue import EmbeddedRedis
from megasr.settings import Settings

DESKTOP = {"width": 1280, "height": 800}
# The stepped engine first, so it is what "auto" runs; the picky one fails on white tiles;
# realesr-animevideov3, a family of the engine catalog (the smallest real network), for the
# model picker.
FAMILY = "realesr-animevideov3"
ENGINES = ["worker_engines:SteppedEngine", "worker_engines:PickyEngine", FAMILY]
WAIT_MS = 30_000  # a deadline for each wait, far above what any takes on a quiet machine

# The focused element draws a ring: its own outline, or for a radio button (visually hidden,
# as in any segmented control) the outline of the label that shows it.
FOCUS_RING = """() => {
  const el = document.activeElement;
  const shown = el.matches("input[type=radio]") ? el.closest("label") : el;
  const style = getComputedStyle(shown);
  const visible = shown.matches(":focus-visible, :has(:focus-visible)");
  const ring = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2;
  return {id: el.id || el.name || el.getAttribute("href") || el.tagName, ring: visible && ring};
}"""

# Every control the keyboard can reach now, named as FOCUS_RING names them (a radio group by
# its name: Tab stops on its checked button).
FOCUSABLE = """() => [...new Set([...document.querySelectorAll(
    "a[href], button, input, select, textarea, summary, [tabindex]")]
  .filter(el => el.tabIndex >= 0 && !el.disabled && el.checkVisibility())
  .map(el => el.id || el.name || el.getAttribute("href") || el.tagName))]"""


# Whether an element is wholly inside the viewport (after any smooth scroll has ended).
IN_VIEW = """id => { const r = document.getElementById(id).getBoundingClientRect();
  return r.top >= 0 && r.bottom <= innerHeight; }"""


class Gate:
    """The stepped engine's gate: closed, each tile waits for a token the test releases."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = itertools.count()

    def close(self) -> None:
        self.folder.mkdir(exist_ok=True)

    def release(self, tiles: int = 1) -> None:
        for _ in range(tiles):
            (self.folder / f"token-{next(self.count):06d}").touch()

    def open(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Stack:
    gateway: Gateway
    gate: Gate

    def job(self, job_id: str) -> dict:
        return self.gateway.http.get(f"/v1/jobs/{job_id}").json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    """Redis, a stepped-engine worker taking one tile per call, and a gateway with auth off."""
    root = tmp_path_factory.mktemp("page")
    gate = Gate(root / "gate")
    with EmbeddedRedis(root / "redis") as redis:
        env = worker_env(
            redis.url,
            root / "data",
            "page",
            MEGASR_WORKER_ENGINES=json.dumps(ENGINES),
            MEGASR_MAX_BATCH_TILES="1",
            MEGASR_MAX_RETRIES="0",
            MEGASR_TEST_GATE=str(gate.folder),
        )
        settings = Settings(
            redis_url=redis.url, data_dir=root / "data", queue_name="page", auth_enabled=False
        )
        gateway = Gateway(settings).start()
        worker = WorkerProcess(env, root / "worker.log")
        try:
            worker.wait_ready()
            yield Stack(gateway, gate)
        finally:
            gate.open()
            worker.stop()
            gateway.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    executable = require("chromium")  # skips (fails in CI) without Debian's chromium
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(chromium, stack):
    """Open the page in a fresh browser context (its own local storage); closed afterwards."""
    contexts = []

    def open_(**context_options):
        options = {"viewport": DESKTOP, "accept_downloads": True, **context_options}
        context = chromium.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on(
            "console", lambda m: m.type == "error" and own_error(m.text) and errors.append(m.text)
        )
        page.errors = errors
        page.goto(stack.gateway.url)
        page.wait_for_selector("#engine option[value='tiny-stepped']", state="attached")
        return page

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page):
    page = open_page()
    yield page
    assert page.errors == [], "the page logged errors"


@pytest.fixture
def picture(tmp_path, photo) -> Path:
    """72x48: six tiles of the stepped engine, for the progress to move through."""
    path = tmp_path / "cup.png"
    Image.open(io.BytesIO(photo)).crop((12, 8, 84, 56)).save(path)
    return path


def own_error(message: str) -> bool:
    """A console error of the page's code (Chromium also logs every 4xx answer it fetched)."""
    return not message.startswith("Failed to load resource")


@pytest.fixture
def small_picture(tmp_path, photo) -> Path:
    """48x32: two tiles, for the tests that need a result but not its progress."""
    path = tmp_path / "cup.png"
    Image.open(io.BytesIO(photo)).crop((24, 16, 72, 48)).save(path)
    return path


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def upscale(page, picture: Path) -> None:
    """Pick ``picture``, submit it with the page's choices and wait for the result."""
    page.set_input_files("#file-input", str(picture))
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")


def test_the_preview_shows_the_sizes_before_anything_is_sent(stack, page, small_picture):
    page.set_input_files("#file-input", str(small_picture))
    expect(page.locator("#picked-info")).to_contain_text(" px ")

    shown = page.eval_on_selector("#preview-image", "img => [img.naturalWidth, img.naturalHeight]")
    picked = text(page, "#picked-info")
    default_output = text(page, "#output-size")
    page.check("input[name=scale][value='2']", force=True)
    doubled = text(page, "#output-size")
    page.check("input[name=scale][value='custom']", force=True)
    page.fill("#width", "75")
    custom = text(page, "#output-size")
    height_hint = page.get_attribute("#height", "placeholder")
    caption = text(page, "#preview-caption")
    thumb_visible = page.is_visible("#thumb")
    engine = text(page, "#engine-description")

    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")
    result = page.eval_on_selector("#result-image", "img => [img.naturalWidth, img.naturalHeight]")

    assert shown == [48, 32] and thumb_visible
    assert picked.startswith("48 × 32 px · ") and picked.endswith("KiB")
    assert default_output == "192 × 128 px"  # 4x unless chosen otherwise
    assert doubled == "96 × 64 px"
    assert custom == "75 × 50 px" and height_hint == "50"  # the height follows
    assert caption == "48 × 32 → 75 × 50 px"
    assert result == [75, 50]  # what the page promised is what the server made
    assert "tiny-stepped" in engine  # no description from the server: the name


def test_the_model_picker_describes_each_engine_and_runs_the_one_chosen(stack, page, small_picture):
    offered = page.eval_on_selector_all("#engine option", "os => os.map(o => o.textContent)")
    automatic = text(page, "#engine-description")
    page.set_input_files("#file-input", str(small_picture))
    page.check("input[name=scale][value='2']", force=True)
    page.select_option("#engine", FAMILY)
    described = text(page, "#engine-description")
    with page.expect_response(re.compile(r"/v1/upscale$")) as submitted:
        page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")
    job = stack.job(submitted.value.json()["id"])
    result = page.eval_on_selector("#result-image", "img => [img.naturalWidth, img.naturalHeight]")

    # one entry per family (its x2/x3/x4 variants folded), the test engines by name
    assert offered == ["Automatic (tiny-stepped)", FAMILY, "tiny-picky", "tiny-stepped"]
    assert automatic == "The server's choice: tiny-stepped"  # no catalog line: the name
    assert described == describe(FAMILY) and "anime" in described  # the catalog's own line
    assert job["params"]["engine"] == FAMILY and job["status"] == "succeeded"
    assert result == [96, 64]


def test_an_engine_still_loading_is_offered_and_its_job_waits_for_it(stack, open_page, tmp_path):
    """Serve at once, on the page: a second worker held loading (as a CPU worker converting
    and compiling for minutes is) announces its engine; the page offers it as loading, queues
    a job on it, and shows the result once the engine is ready."""
    hold = tmp_path / "load-hold"
    hold.touch()
    settings = stack.gateway.settings
    env = worker_env(
        settings.redis_url,
        settings.data_dir,
        settings.queue_name,
        MEGASR_WORKER_ENGINES=json.dumps(["worker_engines:SlowLoadingEngine"]),
        MEGASR_TEST_LOAD_HOLD=str(hold),
    )
    worker = WorkerProcess(env, tmp_path / "slow-worker.log")
    try:
        wait_until(lambda: engine_state(stack, "tiny-slow") == "loading", "the loading engine")
        page = open_page()
        option = page.locator("#engine option[value='tiny-slow']")
        offered = option.text_content()
        page.select_option("#engine", "tiny-slow")
        described = text(page, "#engine-description")
        small = tmp_path / "small.png"
        Image.new("RGB", (24, 16), "teal").save(small)
        page.set_input_files("#file-input", str(small))
        with page.expect_response(re.compile(r"/v1/upscale$")) as submitted:
            page.click("#submit")
        accepted = submitted.value.status
        expect(page.locator("#status")).to_have_text(re.compile(r"^Waiting"))
        waiting = text(page, "#status")
        hold.unlink()
        page.wait_for_selector("#result:not([hidden])")
        expect(option).to_have_text("tiny-slow")  # the page looked again once it was ready
        result = page.eval_on_selector(
            "#result-image", "img => [img.naturalWidth, img.naturalHeight]"
        )
    finally:
        hold.unlink(missing_ok=True)
        worker.stop()

    assert offered == "tiny-slow (loading)"
    assert described == "tiny-slow (loading; jobs wait until it is ready)"
    assert accepted == 202
    assert waiting in {"Waiting for a worker…", "Waiting in line: 1 job ahead"}
    assert result == [96, 64]
    assert page.errors == []


def engine_state(stack: Stack, name: str) -> str | None:
    engines = stack.gateway.http.get("/v1/engines").json()["engines"]
    return next((engine["state"] for engine in engines if engine["name"] == name), None)


def test_progress_moves_tile_by_tile_with_the_time_left_then_the_result(stack, page, picture):
    # Every value the bar shows, recorded in the page as it changes.
    page.evaluate("""() => {
      window.seen = [];
      const bar = document.getElementById("progress");
      new MutationObserver(() => seen.push(Number(bar.getAttribute("aria-valuenow"))))
        .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
    }""")
    stack.gate.close()
    try:
        page.set_input_files("#file-input", str(picture))
        with page.expect_response(re.compile(r"/v1/upscale$")) as submitted:
            page.click("#submit")
        job_id = submitted.value.json()["id"]
        stack.gate.release(1)
        expect(page.locator("#progress-detail")).to_have_text(re.compile(r"^Tile 1 of \d+$"))
        total = int(re.search(r"of (\d+)", text(page, "#progress-detail")).group(1))
        stack.gate.release(1)
        expect(page.locator("#progress-detail")).to_have_text(f"Tile 2 of {total}")
        expect(page.locator("#eta")).not_to_be_empty()
        eta = text(page, "#eta")
        status = text(page, "#status")
        at_two = float(page.get_attribute("#progress", "aria-valuenow"))
        polled = stack.job(job_id)
        stack.gate.release(2)
        expect(page.locator("#progress-detail")).to_have_text(f"Tile 4 of {total}")
        page.wait_for_function(
            "above => Number(document.getElementById('progress').ariaValueNow) > above", arg=at_two
        )
    finally:
        stack.gate.open()
    page.wait_for_selector("#result:not([hidden])")
    # the result is scrolled into view (at 1280x800 it is, whole)
    page.wait_for_function(IN_VIEW, arg="result")
    seen = page.evaluate("seen")
    done = stack.job(job_id)

    assert total == 6
    assert status == "Upscaling…"
    assert re.fullmatch(r"about \d+ s left|almost done", eta), eta
    assert polled["work"] == {"done": 2, "total": total, "unit": "tiles"}
    assert done["work"] == {"done": total, "total": total, "unit": "tiles"}
    assert seen == sorted(seen), "the bar went backwards"
    assert seen[-1] == 100
    between = {round(v) for v in seen if 10 < v < 95}
    assert len(between) >= 10, f"too few steps between 10 % and 95 %: {sorted(between)}"
    jumps = [b - a for a, b in itertools.pairwise(seen)]
    assert max(jumps) < 30, f"the bar jumped by {max(jumps):.0f} points"


def canvases(page) -> list[dict]:
    """The view of each pane: its canvas's scale and translation, as the browser computed them."""
    return page.eval_on_selector_all(
        "#viewer .canvas",
        """cs => cs.map(c => { const m = new DOMMatrix(getComputedStyle(c).transform);
            return {scale: +m.a.toFixed(4), x: +m.e.toFixed(2), y: +m.f.toFixed(2)}; })""",
    )


def viewer_centre(page) -> tuple[float, float]:
    box = page.locator("#viewer").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_the_comparison_zooms_and_pans_with_both_sides_locked(stack, page, small_picture):
    upscale(page, small_picture)
    fitted = canvases(page)
    box = page.locator("#viewer").bounding_box()
    x, y = box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5  # off the divider
    page.mouse.move(x, y)
    page.mouse.wheel(0, -400)
    expect(page.locator("#zoom-level")).not_to_have_text("Fit")
    zoomed = canvases(page)
    page.mouse.down()
    page.mouse.move(x - 80, y - 50, steps=5)
    page.mouse.up()
    panned = canvases(page)
    page.fill("#compare-slider", "25")
    clip = page.eval_on_selector(".pane.before", "p => getComputedStyle(p).clipPath")

    page.click("text=Side by side")
    expect(page.locator("#zoom-level")).to_have_text("Fit")
    side_fitted = canvases(page)
    right = page.locator(".pane.after").bounding_box()
    page.mouse.move(right["x"] + right["width"] * 0.3, right["y"] + right["height"] * 0.4)
    page.mouse.wheel(0, -300)
    expect(page.locator("#zoom-level")).not_to_have_text("Fit")
    side_zoomed = canvases(page)
    widths = page.eval_on_selector_all("#viewer .pane", "ps => ps.map(p => p.clientWidth)")
    side_clip = page.eval_on_selector(".pane.before", "p => getComputedStyle(p).clipPath")

    assert fitted[0] == fitted[1] and fitted[0]["scale"] == 1
    assert zoomed[0] == zoomed[1] and zoomed[0]["scale"] > 1.5
    assert panned[0] == panned[1]
    assert panned[0]["x"] == pytest.approx(zoomed[0]["x"] - 80, abs=1)
    assert panned[0]["y"] == pytest.approx(zoomed[0]["y"] - 50, abs=1)
    assert clip == "inset(0px 75% 0px 0px)"
    assert widths[0] == widths[1] < page.locator("#viewer").bounding_box()["width"] / 2 + 1
    assert side_clip == "none"  # side by side, the whole of both
    assert side_fitted[0] == side_fitted[1] and side_fitted[0]["scale"] == 1
    assert side_zoomed[0] == side_zoomed[1] and side_zoomed[0]["scale"] > 1.3


def test_a_pinch_zooms_both_sides_and_touch_screens_say_tap(stack, open_page, small_picture):
    page = open_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    invitation = text(page, "#drop-text")
    upscale(page, small_picture)
    page.wait_for_function(IN_VIEW, arg="result")  # below the options: the page scrolls to it
    x, y = viewer_centre(page)
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, spread: float) -> None:
        points = [{"x": x - spread, "y": y, "id": 0}, {"x": x + spread, "y": y, "id": 1}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", 20)
    for spread in range(30, 110, 10):
        touch("touchMove", spread)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(page.locator("#zoom-level")).not_to_have_text("Fit")
    pinched = canvases(page)

    assert invitation == "Tap to choose an image"
    assert pinched[0] == pinched[1] and pinched[0]["scale"] > 2  # the fingers spread 5x


def colours(page) -> dict[str, tuple[int, ...]]:
    return page.evaluate("""() => {
      const rgb = (el, prop) => getComputedStyle(el)[prop].match(/\\d+/g).slice(0, 3).map(Number);
      const root = document.documentElement;
      return {background: rgb(root, "backgroundColor"), text: rgb(document.body, "color"),
              panel: rgb(document.querySelector(".panel"), "backgroundColor")};
    }""")


def luminance(rgb) -> float:
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def test_dark_mode_follows_the_system_and_the_toggle(stack, open_page):
    light = colours(open_page(color_scheme="light"))
    page = open_page(color_scheme="dark")
    dark = colours(page)
    pressed = page.get_attribute("#theme-toggle", "aria-pressed")
    page.click("#theme-toggle")
    toggled = colours(page)
    page.reload()
    page.wait_for_selector("#engine option[value='tiny-stepped']", state="attached")
    kept = colours(page)

    assert luminance(light["background"]) > 0.9 and luminance(light["text"]) < 0.2
    assert luminance(dark["background"]) < 0.1 and luminance(dark["text"]) > 0.8
    assert luminance(dark["panel"]) < 0.15
    assert pressed == "true"
    assert toggled == light and kept == light  # the choice is kept over the system's


def test_keyboard_only_from_choosing_a_file_to_downloading(stack, page, small_picture):
    rings = []

    def tab_to(element_id: str, backwards: bool = False) -> None:
        for _ in range(25):
            page.keyboard.press("Shift+Tab" if backwards else "Tab")
            rings.append(page.evaluate(FOCUS_RING))
            if page.evaluate("document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    # Listen before the first key: Chromium intercepts file choosers only once asked to.
    page.on("filechooser", lambda chooser: chooser.set_files(str(small_picture)))
    tab_to("drop-zone")
    page.keyboard.press("Enter")
    expect(page.locator("#output-size")).to_have_text("192 × 128 px")  # its size is known
    page.keyboard.press("Tab")  # into the scale choices, on the checked one
    rings.append(page.evaluate(FOCUS_RING))
    page.keyboard.press("ArrowLeft")  # 4x -> 3x
    output = text(page, "#output-size")
    tab_to("submit")
    page.keyboard.press("Space")
    page.wait_for_selector("#result:not([hidden])")
    expect(page.locator("#download")).to_be_focused()
    rings.append(page.evaluate(FOCUS_RING))
    tab_to("viewer", backwards=True)
    page.keyboard.press("ArrowRight")  # at fit: moves the split
    split = page.input_value("#compare-slider")
    page.keyboard.press("+")
    zoom = text(page, "#zoom-level")
    tab_to("download")
    with page.expect_download() as download_info:
        page.keyboard.press("Enter")
    download = download_info.value
    # Once round the whole page (the recent list is there now), back to the download button.
    focusable = page.evaluate(FOCUSABLE)
    visited = {r["id"] for r in rings}
    page.keyboard.press("Tab")
    visited_round = set()
    for _ in range(60):
        if page.evaluate("document.activeElement.id") == "download":
            break
        ring = page.evaluate(FOCUS_RING)
        if ring["id"] != "BODY":  # past the last control, focus leaves the page once
            rings.append(ring)
            visited_round.add(ring["id"])
        page.keyboard.press("Tab")

    assert output == "144 × 96 px"
    assert split == "55" and zoom != "Fit"
    assert download.suggested_filename == "cup-megasr.png"
    assert image_size(Path(download.path()).read_bytes()) == (144, 96)
    missing = [ring["id"] for ring in rings if not ring["ring"]]
    assert missing == [], f"no visible focus on {missing}"
    assert {"drop-zone", "scale", "submit", "download", "viewer"} <= visited
    assert set(focusable) - {"download"} <= visited_round, "Tab skips a control"
    assert {"theme-toggle", "engine", "view-mode", "zoom-in", "recent-clear"} <= visited_round


def test_recent_jobs_are_kept_in_this_browser_to_download_again(stack, page, small_picture):
    upscale(page, small_picture)
    page.reload()
    page.wait_for_selector("#recent-list li")
    entry = text(page, "#recent-list li")
    with page.expect_download() as download_info:
        page.click("#recent-list li button")
    download = download_info.value

    assert entry.startswith("cup-megasr.png\n192 × 128 · just now")
    assert download.suggested_filename == "cup-megasr.png"
    assert image_size(Path(download.path()).read_bytes()) == (192, 128)


# Which of the error and progress boxes show, recorded in the page at every change.
RECORD_BOXES = """() => {
  window.boxes = [];
  const progress = document.getElementById("progress-box");
  const error = document.getElementById("error");
  const record = () => boxes.push({progress: !progress.hidden, error: !error.hidden});
  for (const box of [progress, error]) {
    new MutationObserver(record).observe(box, {attributes: true, attributeFilter: ["hidden"]});
  }
}"""


def test_a_job_that_fails_in_the_worker_replaces_the_progress_with_its_error(stack, page, tmp_path):
    white = tmp_path / "white.png"
    Image.new("RGB", (40, 32), "white").save(white)
    page.evaluate(RECORD_BOXES)
    page.set_input_files("#file-input", str(white))
    page.select_option("#engine", "tiny-picky")
    with page.expect_response(re.compile(r"/v1/upscale$")) as submitted:
        page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    failed = stack.job(submitted.value.json()["id"])
    boxes = page.evaluate("boxes")

    assert failed["status"] == "failed"
    assert boxes[0] == {"progress": True, "error": False}
    assert boxes[-1] == {"progress": False, "error": True}
    assert {"progress": True, "error": True} not in boxes  # never one under the other
    assert text(page, "#error-title") == failed["error"]["title"]
    assert text(page, "#error-detail") == failed["error"]["detail"]
    assert text(page, "#retry") == "Try again"
    assert page.is_hidden("#result") and page.is_enabled("#submit")


def test_a_refused_upload_replaces_the_progress_with_its_error(stack, page, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    page.evaluate(RECORD_BOXES)
    page.set_input_files("#file-input", str(notes))
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    boxes = page.evaluate("boxes")

    assert boxes[0] == {"progress": True, "error": False}  # "Uploading notes.png..."
    assert boxes[-1] == {"progress": False, "error": True}
    assert text(page, "#error-title") == "Invalid image"
    assert "not an image" in text(page, "#error-detail")
    assert text(page, "#retry") == "Choose another image"


def test_a_gateway_with_keys_gets_one_from_the_page_and_keeps_it(stack, chromium):
    settings = stack.gateway.settings.model_copy(
        update={"auth_enabled": True, "api_keys": API_KEYS}
    )
    gateway = Gateway(settings).start()
    context = chromium.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(gateway.url)
        expect(page.locator("#engine-description")).to_have_text("This server needs an API key.")
        asked = page.eval_on_selector("#key-box", "box => box.open")
        page.fill("#api-key", "key-a")
        page.keyboard.press("Tab")  # "change": the page tries the key
        page.wait_for_selector("#engine option[value='tiny-stepped']", state="attached")
        page.reload()
        page.wait_for_selector("#engine option[value='tiny-stepped']", state="attached")
        kept = page.input_value("#api-key")
    finally:
        context.close()
        gateway.stop()

    assert asked is True
    assert kept == "key-a"


def test_the_job_view_counts_the_work(stack, small_picture):
    """The counts behind the page's progress, through the API alone (no browser needed)."""
    upload = {"image": ("cup.png", small_picture.read_bytes())}
    response = stack.gateway.http.post("/v1/upscale", files=upload, data={"scale": "2"})
    job_id = response.json()["id"]
    wait_until(lambda: stack.job(job_id)["status"] == "succeeded", "the job")
    view = stack.job(job_id)

    assert response.json()["work"] is None  # queued: nothing counted yet
    assert view["work"]["unit"] == "tiles" and view["work"]["done"] == view["work"]["total"] > 1


def test_the_readme_shows_the_page_in_small_screenshots(repo_root):
    """Desktop and mobile, light and dark, as ``bench/page_screenshots.py`` makes them."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    linked = re.findall(r"docs/images/(page-[a-z-]+\.png)", readme)
    expected = {
        f"page-{size}-{theme}.png" for size in ("desktop", "mobile") for theme in ("light", "dark")
    }

    assert set(linked) == expected
    for name in expected:
        path = repo_root / "docs" / "images" / name
        with Image.open(path) as shot:
            width = shot.size[0]
        assert path.stat().st_size < 150_000, f"{name} is {path.stat().st_size} bytes"
        assert width == (1280 if "desktop" in name else 780)  # mobile: 390 px at 2x
