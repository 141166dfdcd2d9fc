"""Screenshots of the web page for the README (``docs/images/page-*.png``) and its favicon.

Starts the service on loopback the way ``megasr serve`` runs it (an embedded Redis, a
``megasr worker`` child with the default engine on the CPU, and the gateway with auth off),
opens the page in headless Chromium (Debian's ``/usr/bin/chromium``) and takes four pictures
of real upscales of a 120x80 crop of ``samples/coffee.jpg`` (small, so that a busy CPU makes
them in a minute or two):

- desktop (1280x800), light: the comparison, zoomed in on the slider;
- desktop, dark: the same result side by side, zoomed;
- mobile (390x844), light: the picked image with its size and the output size;
- mobile, dark: the job in progress, with the tile count and the time left.

The worker takes one tile per engine call (``MEGASR_MAX_BATCH_TILES=1``, 48-pixel tiles) so
the progress has steps to show. Each PNG is reduced to a 256-colour palette to stay small.
With ``--favicon`` it also rasterises ``service/static/icon.svg`` into ``favicon.ico``.

    .venv/bin/python bench/page_screenshots.py [--out docs/images] [--favicon PATH]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

from megasr.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the service's parts as children: the tests' harness
from loopback import ChildServer, free_port, gateway_command, worker_command  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SAMPLE = ROOT / "samples" / "coffee.jpg"
CROP = (40, 20, 160, 100)  # the cup's rim and the saucer
ICON = ROOT / "service" / "static" / "icon.svg"
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
MOBILE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
ENGINE_READY_TIMEOUT_S = 300.0  # loading and warming up real weights on a busy CPU
WAIT_MS = 900_000  # a real engine on a busy 2-core CPU: minutes per job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--favicon", type=Path, help="also write favicon.ico here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=WAIT_MS)
    with ExitStack() as stack, sync_playwright() as playwright:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        photo = root / "coffee.png"
        Image.open(SAMPLE).crop(CROP).save(photo)
        url = start_service(stack, root)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        desktop(browser, url, photo, args.out)
        mobile(browser, url, photo, args.out)
        if args.favicon:
            favicon(browser, args.favicon)
        browser.close()


def start_service(stack: ExitStack, root: Path) -> str:
    redis = stack.enter_context(EmbeddedRedis(root / "redis"))
    env = {
        **os.environ,
        "MEGASR_REDIS_URL": redis.url,
        "MEGASR_DATA_DIR": str(root / "data"),
        "MEGASR_AUTH_ENABLED": "false",
        "MEGASR_DEVICE": "cpu",
        "MEGASR_BACKEND": "eager",
        "MEGASR_TILE": "48",
        "MEGASR_MAX_BATCH_TILES": "1",
    }
    worker_port, gateway_port = free_port(), free_port()
    worker = ChildServer(worker_command(worker_port), env, worker_port, root / "worker.log")
    stack.enter_context(worker).wait_ready(ENGINE_READY_TIMEOUT_S)
    gateway = ChildServer(gateway_command(gateway_port), env, gateway_port, root / "gateway.log")
    return stack.enter_context(gateway).wait_ready().url


def open_page(browser, url: str, options: dict, scheme: str) -> Page:
    page = browser.new_context(color_scheme=scheme, **options).new_page()
    page.goto(url)
    expect(page.locator("#engine-description")).not_to_be_empty()
    return page


def desktop(browser, url: str, photo: Path, out: Path) -> None:
    page = open_page(browser, url, DESKTOP, "light")
    page.set_input_files("#file-input", str(photo))
    page.click("#submit")
    expect(page.locator("#result")).to_be_visible()
    zoom_at(page, 0.62, 0.45, clicks=4)
    save(page, out / "page-desktop-light.png")
    page.emulate_media(color_scheme="dark")
    page.click("text=Side by side")
    zoom_at(page, 0.3, 0.45, clicks=5)
    save(page, out / "page-desktop-dark.png")
    page.context.close()


def mobile(browser, url: str, photo: Path, out: Path) -> None:
    page = open_page(browser, url, MOBILE, "light")
    page.set_input_files("#file-input", str(photo))
    expect(page.locator("#output-size")).to_contain_text("px")
    save(page, out / "page-mobile-light.png")
    page.emulate_media(color_scheme="dark")
    page.click("#submit")
    expect(page.locator("#eta")).not_to_be_empty()
    page.wait_for_function("() => Number(document.getElementById('progress').ariaValueNow) > 30")
    save(page, out / "page-mobile-dark.png")
    page.context.close()


def zoom_at(page: Page, fx: float, fy: float, clicks: int) -> None:
    """Wheel-zoom the comparison at a point given as fractions of the viewer."""
    box = page.locator("#viewer").bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    for _ in range(clicks):
        page.mouse.wheel(0, -120)
    expect(page.locator("#zoom-level")).not_to_have_text("Fit")


def save(page: Page, path: Path) -> None:
    """The viewport as a 256-colour PNG."""
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


def favicon(browser, path: Path) -> None:
    """icon.svg drawn by Chromium at 256 px, stored as a 16/32/48 px ICO."""
    page = browser.new_page(viewport={"width": 256, "height": 256})
    svg = base64.b64encode(ICON.read_bytes()).decode()
    page.set_content(
        f'<img src="data:image/svg+xml;base64,{svg}" width="256" height="256">'
        "<style>body{margin:0}img{display:block}</style>"
    )
    drawn = Image.open(io.BytesIO(page.locator("img").screenshot(omit_background=True)))
    drawn.save(path, format="ICO", sizes=[(16, 16), (32, 32), (48, 48)])
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    page.close()


if __name__ == "__main__":
    main()
