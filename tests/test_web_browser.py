"""The web page in a real headless browser: Debian's chromium driven by playwright.

``metricdepth serve`` runs as a subprocess with the bundled default model; the browser uploads
the bundled example, waits for the depth view, clicks two points and reads the distance, checks
that the 3-D view drew points, downloads the PLY, and saves a screenshot of the finished page.
Without /usr/bin/chromium (or playwright) the test is skipped, unless METRICDEPTH_REQUIRE_BROWSER=1
(CI), where it fails. No browser is ever downloaded.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from metricdepth.camera import Camera
from metricdepth.measure import measure

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "metricdepth" / "assets" / "example_nyu.jpg"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",  # software WebGL where no GPU is used
]
#: Colour of the 3-D canvas before anything is drawn (#0b0c10, see viewer.js / style.css).
BACKGROUND = np.array([11, 12, 16])


def _browser_or_skip():
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        problem = f"playwright is not installed ({error})"
    if problem is None and not CHROMIUM.is_file():
        problem = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if problem is None:
        return sync_playwright
    if os.environ.get("METRICDEPTH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"METRICDEPTH_REQUIRE_BROWSER=1 but {problem}")
    pytest.skip(problem)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(tmp: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp)}
    command = [sys.executable, "-m", "metricdepth", "serve", "--port", str(port)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_healthy(base: str, server: subprocess.Popen, timeout_s: float = 60.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"metricdepth serve exited: {server.communicate()}")
        try:
            return httpx.get(f"{base}/api/health", timeout=2).json()
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("metricdepth serve did not answer in time")


def test_page_in_a_real_browser(tmp_path):
    sync_playwright = _browser_or_skip()
    import httpx

    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start_server(server_tmp, port)
    try:
        health = _wait_healthy(base, server)
        assert health["model"] == "metricdepth-small"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                outside: list[str] = []
                page.on(
                    "request",
                    lambda r: (
                        None
                        if r.url.startswith((base, "data:", "blob:"))
                        else outside.append(r.url)
                    ),
                )
                _use_the_page(page, base, tmp_path)
                _without_webgl(browser.new_page(viewport={"width": 1400, "height": 1000}), base)
                _api_page_offline(browser.new_page(), base)
                assert not errors, errors
                assert not outside, f"the page fetched from elsewhere: {outside}"
            finally:
                browser.close()
        bad = [("notes.txt", b"plain text", 415), ("cut.jpg", _cut_jpeg(), 400)]
        for name, data, status in bad:
            answer = httpx.post(f"{base}/api/predict", files={"image": (name, data)}, timeout=30)
            assert answer.status_code == status and name in answer.json()["error"]
        assert httpx.get(f"{base}/api/health", timeout=5).json()["status"] == "ok"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, stderr = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr  # not for the bad requests either
    # the server deleted its temporary results when it stopped
    assert not list(server_tmp.glob("metricdepth-web-*")), list(server_tmp.iterdir())
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/api/health", timeout=2)


def _use_the_page(page, base: str, tmp_path: Path) -> None:
    import httpx

    page.goto(base + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('metricdepth')")
    # the bundled model is not meant for real photographs: the page says so, visibly
    trust = page.locator("#trust")
    trust.wait_for(state="visible")
    notice = trust.text_content()
    assert notice.startswith("warning: metricdepth-small") and "not for real photographs" in notice
    assert "--model metric3d-vit-small" in notice
    box = trust.bounding_box()
    assert box["height"] >= 14 and box["width"] > 600
    page.set_input_files("#file", str(EXAMPLE))
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
    result_id = page.evaluate("document.body.dataset.resultId")
    summary = httpx.get(f"{base}/api/results/{result_id}").json()
    assert summary["warnings"] and page.locator("#trust").is_visible()
    assert page.text_content("#trust") == " ".join("warning: " + w for w in summary["warnings"])
    assert summary["warnings"][-1].startswith("camera assumed: ")  # no EXIF focal, no camera

    # intrinsics prefilled, with their source (the example has no EXIF focal: the default)
    assert page.get_attribute("#camera-source", "data-source") == summary["camera_source"]
    assert summary["camera_source"] in ("exif", "default")
    assert float(page.input_value("#fx")) == pytest.approx(summary["camera"]["fx"], abs=1e-3)
    assert float(page.input_value("#fov")) == pytest.approx(summary["fov_x_deg"], abs=0.01)
    # the depth view and its scale bar in metres
    assert page.evaluate("document.getElementById('depth').naturalWidth") == 640
    ticks = page.locator("#ticks span").all_text_contents()
    assert len(ticks) >= 2 and all(re.fullmatch(r"[0-9.]+ m", t) for t in ticks), ticks

    # click two points on the photo -> a distance in metres, the API's for the same pixels
    box = page.locator("#pick-image").bounding_box()
    clicks = [(0.25, 0.3), (0.75, 0.7)]
    for fx, fy in clicks:
        page.locator("#pick-image").click(
            position={"x": box["width"] * fx, "y": box["height"] * fy}
        )
    page.wait_for_selector("#distance[data-distance]")
    text = page.text_content("#distance")
    shown = float(re.search(r"distance: ([0-9.]+) m", text).group(1))
    pixels = json.loads(page.get_attribute("#distance", "data-pixels"))
    for (u, v), (fx, fy) in zip(pixels, clicks, strict=True):
        assert abs(u - fx * 640) <= 2 and abs(v - fy * 480) <= 2, pixels
    api = httpx.post(
        f"{base}/api/measure", json={"id": result_id, "p1": pixels[0], "p2": pixels[1]}
    ).json()
    assert math.isfinite(shown) and shown > 0
    assert shown == pytest.approx(api["distance_m"], abs=5e-4)
    depth = np.load(io.BytesIO(httpx.get(f"{base}{summary['urls']['depth']}").content))
    camera = Camera(**summary["camera"])
    here = measure(SimpleNamespace(depth_m=depth, camera=camera), pixels[0], pixels[1])
    assert shown == pytest.approx(here.distance_m, abs=5e-4)

    # the 3-D view drew points: many non-background pixels of many colours
    assert page.get_attribute("#cloud", "data-points") == str(summary["points"]["count"])
    mode = page.get_attribute("#cloud", "data-mode")
    assert mode in ("webgl", "2d")
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#cloud").screenshot())).convert("RGB"))
    drawn = _cloud_pixels(page)
    assert drawn.mean() > 0.2, f"{mode}: only {drawn.mean():.1%} of the 3-D view drawn"
    assert len(np.unique(shot[drawn].reshape(-1, 3) // 16, axis=0)) > 50
    # orbiting changes the picture
    cloud = page.locator("#cloud").bounding_box()
    page.mouse.move(cloud["x"] + 300, cloud["y"] + 200)
    page.mouse.down()
    page.mouse.move(cloud["x"] + 420, cloud["y"] + 230, steps=4)
    page.mouse.up()
    turned = np.asarray(Image.open(io.BytesIO(page.locator("#cloud").screenshot())).convert("RGB"))
    assert np.abs(turned.astype(int) - shot.astype(int)).sum(axis=-1).mean() > 5
    page.locator("#cloud").dblclick()  # back to the first view
    again = np.asarray(Image.open(io.BytesIO(page.locator("#cloud").screenshot())).convert("RGB"))
    assert np.abs(again.astype(int) - shot.astype(int)).sum(axis=-1).mean() < 1

    # download the PLY: it parses, with one vertex per valid depth pixel
    with page.expect_download() as download:
        page.click("#dl-ply")
    ply = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == "example_nyu.ply"
    header, _, payload = ply.partition(b"end_header\n")
    lines = header.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    count = int(next(line.split()[-1] for line in lines if line.startswith("element vertex")))
    properties = [line.split()[1:] for line in lines if line.startswith("property")]
    assert count == int((depth > 0).sum()) > 0
    row = sum(4 if kind == "float" else 1 for kind, _ in properties)
    assert len(payload) == count * row
    xyz = np.frombuffer(payload, dtype=np.dtype([(n, "<f4" if k == "float" else "u1")
                                                 for k, n in properties]))  # fmt: skip
    assert np.isfinite(xyz["z"]).all() and (xyz["z"] > 0).all()

    screenshot = tmp_path / "web.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    target = os.environ.get("METRICDEPTH_WEB_SCREENSHOT")  # docs/web.png is made this way
    if target:
        shutil.copyfile(screenshot, target)
    print(f"3-D view: {mode}; distance {shown} m; screenshot {screenshot}")

    # edit the field of view: fx follows, and a new run uses it as a given camera
    page.fill("#fov", "70")
    page.dispatch_event("#fov", "input")
    focal = 640 / (2 * math.tan(math.radians(35)))
    assert float(page.input_value("#fx")) == pytest.approx(focal, abs=1e-3)
    assert page.get_attribute("#camera-source", "data-source") == "given"
    page.click("#run")
    page.wait_for_function(f"document.body.dataset.resultId !== '{result_id}'", timeout=30_000)
    rerun = httpx.get(f"{base}/api/results/{page.evaluate('document.body.dataset.resultId')}")
    assert rerun.json()["camera_source"] == "given"
    assert rerun.json()["camera"]["fx"] == pytest.approx(focal, abs=1e-3)
    assert rerun.json()["fov_x_deg"] == pytest.approx(70.0, abs=1e-4)


def _cloud_pixels(page) -> np.ndarray:
    """The 3-D view as the browser shows it: which pixels differ from the empty background."""
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#cloud").screenshot())).convert("RGB"))
    return np.abs(shot.astype(int) - BACKGROUND).sum(axis=-1) > 30


def _without_webgl(page, base: str) -> None:
    """A browser without WebGL gets the 2-D canvas fallback, which draws the points too."""
    page.add_init_script(
        """(() => {
          const original = HTMLCanvasElement.prototype.getContext;
          HTMLCanvasElement.prototype.getContext = function (kind, options) {
            return String(kind).includes("webgl") ? null : original.call(this, kind, options);
          };
        })();"""
    )
    page.goto(base + "/")
    page.set_input_files("#file", str(EXAMPLE))
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
    assert page.get_attribute("#cloud", "data-mode") == "2d"
    assert "2-D canvas" in page.text_content("#cloud-info")
    assert _cloud_pixels(page).mean() > 0.2
    # a file that is not an image: the page says so in one line and keeps the last result
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert message.startswith("error: image notes.txt: not an image"), message
    assert page.get_attribute("#cloud", "data-mode") == "2d"


def _api_page_offline(page, base: str) -> None:
    """/docs renders its operations with the network cut off to all but this server."""
    elsewhere: list[str] = []
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def only_this_server(route) -> None:
        url = route.request.url
        if url.startswith((base + "/", "data:", "blob:")):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(base + "/docs")
    operation = page.locator('.opblock[id$="api_predict_post"] [data-path="/api/predict"]')
    operation.wait_for(timeout=10_000)
    assert page.locator('[data-path="/api/measure"]').count() == 1
    assert "Unable to render" not in page.text_content("body")
    assert not elsewhere, f"/docs fetched from elsewhere: {elsewhere}"
    assert not errors, errors
    page.close()


def _cut_jpeg() -> bytes:
    data = EXAMPLE.read_bytes()
    return data[: len(data) // 3]
