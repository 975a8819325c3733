"""The web server's JSON API: predictions, measuring, downloads, every bad request, queueing and
the cleanup of temporary files (FastAPI's TestClient, and a real uvicorn server for concurrency).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

pytest.importorskip("fastapi")
with warnings.catch_warnings():  # newer Starlette warns about its httpx-based client
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from conftest import TINY_SPEC, TinyNet, tiny_model  # noqa: E402
from metricdepth.camera import Camera  # noqa: E402
from metricdepth.io import read_depth, read_image  # noqa: E402
from metricdepth.measure import measure  # noqa: E402
from metricdepth.models.registry import DepthModel  # noqa: E402
from metricdepth.pipeline import predict  # noqa: E402
from metricdepth.web.app import DEFAULT_MAX_UPLOAD_BYTES, create_app  # noqa: E402
from webserver import running  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`")

EXAMPLE = Path(__file__).resolve().parents[1] / "src" / "metricdepth" / "assets" / "example_nyu.jpg"


# ---------------------------------------------------------------- files
def jpeg_bytes(size=(64, 48), seed=0, exif_f35: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if exif_f35 is None:
        image.save(buffer, "JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.FocalLengthIn35mmFilm] = exif_f35
        image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def png_bytes(size=(64, 48), seed=1) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def bomb_png(width=20000, height=20000) -> bytes:
    """A valid PNG signature and header announcing ``width x height`` pixels (no pixel data):
    Pillow refuses it on opening, over twice its MAX_IMAGE_PIXELS."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def image_field(data: bytes, name="photo.jpg", mime="image/jpeg") -> dict:
    return {"image": (name, data, mime)}


# ---------------------------------------------------------------- models
class WithExtras(torch.nn.Module):
    """The tiny net plus normals and confidence, as the official models have them."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()

    def forward(self, x):
        out = self.net(x)
        b, _, h, w = x.shape
        normal = torch.zeros(b, 4, h, w)
        normal[:, 0] = torch.linspace(-0.5, 0.5, w)
        normal[:, 2] = -1.0
        normal[:, 3] = 1.0
        return {**out, "normal": normal, "confidence": torch.sigmoid(x[:, :1])}


def extras_model() -> DepthModel:
    from dataclasses import replace

    spec = replace(TINY_SPEC, name="tiny-extras", outputs=("normal", "confidence"))
    return DepthModel(spec, WithExtras()).eval()


class Gauge(torch.nn.Module):
    """The tiny net, slowed down, counting how many forward passes run at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet()
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0
        self.delay_s = 0.05

    def forward(self, x):
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay_s)
        try:
            return self.net(x)
        finally:
            with self.lock:
                self.now -= 1


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model() -> DepthModel:
    return tiny_model()


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def client(model, work_dir):
    app = create_app(model, work_dir=work_dir)
    with TestClient(app) as test_client:
        yield test_client


def result_folders(client) -> set[str]:
    return {p.name for p in client.app.state.store.root.iterdir()}


def post_ok(client, data: bytes | None = None, **form) -> dict:
    answer = client.post("/api/predict", files=image_field(data or jpeg_bytes()), data=form)
    assert answer.status_code == 200, answer.text
    return answer.json()


# ---------------------------------------------------------------- the good paths
def test_health(client, model):
    answer = client.get("/api/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["model"] == model.spec.name
    assert body["max_upload_bytes"] == DEFAULT_MAX_UPLOAD_BYTES == 25_000_000
    # the tiny test model states no intended use: the page is told to warn
    assert body["intended_use"] == {"real_photos": None, "text": "not stated"}
    assert body["warnings"] == [model.spec.trust_warning()] and body["warnings"][0]


def test_the_answer_and_record_say_what_made_them_and_how_far_to_trust_it(work_dir):
    from metricdepth import __version__
    from metricdepth.models.registry import ASSETS, load_model

    bundled = load_model()
    with TestClient(create_app(bundled, work_dir=work_dir)) as bundled_client:
        body = post_ok(bundled_client, EXAMPLE.read_bytes())
        record = bundled_client.get(body["urls"]["record"]).json()
    warning = bundled.spec.trust_warning()
    assert "not for real photographs" in warning
    camera_line = record["warnings"][-1]  # the upload has no camera: it is assumed
    assert camera_line.startswith("camera assumed: ")
    assert body["warnings"] == record["warnings"] == [warning, camera_line]
    assert body["intended_use"] == record["intended_use"]
    assert body["intended_use"]["real_photos"] is False
    assert body["metricdepth_version"] == record["metricdepth_version"] == __version__
    digest = hashlib.sha256((ASSETS / "metricdepth-small.safetensors").read_bytes()).hexdigest()
    assert body["weights_sha256"] == record["weights_sha256"] == digest
    assert record["input"] == "photo.jpg"  # the upload's name
    assert set(body["timings_ms"]) == {"pre", "forward", "post"}
    assert body["timings_ms"] == record["timings_ms"]


def test_page_and_openapi_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "metricdepth" in page.text
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert links and all(link.startswith("/") or link == "data:," for link in links), links
    for asset in ("app.js", "viewer.js", "style.css"):
        assert f"/static/{asset}" in links
        served = client.get(f"/static/{asset}")
        assert served.status_code == 200 and len(served.content) > 500
        assert "http://" not in served.text and "https://" not in served.text  # nothing fetched
    schema = client.get("/openapi.json").json()
    for path in ("/api/predict", "/api/measure", "/api/health", "/api/camera"):
        assert path in schema["paths"]


def test_openapi_page_loads_nothing_from_elsewhere(client):
    """/docs is Swagger UI with its script, style and icon served by the app (no CDN)."""
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle(" in docs.text and "url: '/openapi.json'" in docs.text
    hosts = re.findall(r"https?://([^/\"'\s]+)", docs.text)
    assert not [h for h in hosts if h.split(":")[0] not in ("localhost", "127.0.0.1")], hosts
    links = re.findall(r'(?:src|href)="([^"]*)"', docs.text)
    assert {link.rsplit("/", 1)[-1] for link in links} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    for link in links:
        assert link.startswith("/") and not link.startswith("//"), link
        served = client.get(link)
        assert served.status_code == 200 and len(served.content) > 100, link
    script = client.get(next(link for link in links if link.endswith(".js"))).text
    assert "SwaggerUIBundle" in script and len(script) > 500_000  # the real bundle
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/measure", "/api/health"} <= set(schema["paths"])
    assert client.get("/redoc").status_code == 404  # ReDoc would fetch its logo from a CDN


def test_openapi_page_without_its_package_says_what_to_install(monkeypatch, model, work_dir):
    monkeypatch.setitem(__import__("sys").modules, "fastapi_offline", None)
    with TestClient(create_app(model, work_dir=work_dir)) as bare:
        docs = bare.get("/docs")
        assert docs.status_code == 503 and "https://" not in docs.text
        assert "fastapi-offline" in docs.text and "pip install 'metricdepth[web]'" in docs.text
        assert "/api/predict" in bare.get("/openapi.json").json()["paths"]
        assert bare.get("/docs-assets/swagger-ui-bundle.js").status_code == 404
        assert bare.get("/api/health").json()["status"] == "ok"


def test_predict_matches_the_python_api_and_writes_every_artefact(client, model, tmp_path):
    data = EXAMPLE.read_bytes()
    intrinsics = "518.8579,519.46961,325.58245,253.73617"
    body = post_ok(client, data, intrinsics=intrinsics)
    rgb, _ = read_image(EXAMPLE)
    camera = Camera.from_intrinsics([float(v) for v in intrinsics.split(",")], 640, 480)
    direct = predict(model, rgb, camera, camera_source="given")
    assert body["camera_source"] == "given"
    assert body["camera"] == camera.to_dict()
    assert body["image"] == {"name": "photo", "width": 640, "height": 480}
    valid = direct.depth_m[direct.depth_m > 0]
    assert body["depth_m"]["median"] == pytest.approx(float(np.median(valid)), rel=1e-6)
    assert body["depth_m"]["max"] == pytest.approx(float(valid.max()), rel=1e-6)
    near, far = body["colormap"]["near_m"], body["colormap"]["far_m"]
    assert valid.min() <= near < far <= valid.max()
    low, high = np.percentile(1.0 / valid, [2, 98])  # the colour map's ends, linear in 1/m
    assert (near, far) == pytest.approx((1.0 / high, 1.0 / low), rel=1e-5)

    depth_file = tmp_path / "d.npy"
    depth_file.write_bytes(client.get(body["urls"]["depth"]).content)
    # byte for byte: the server runs this same predict() in this process, on its worker
    # thread with the same torch thread count (a process-wide setting)
    np.testing.assert_array_equal(np.load(depth_file), direct.depth_m)
    png = client.get(body["urls"]["png16"])
    assert png.headers["content-disposition"] == 'attachment; filename="photo.depth.png"'
    (tmp_path / "d.png").write_bytes(png.content)
    np.testing.assert_allclose(read_depth(tmp_path / "d.png", 1000.0), direct.depth_m, atol=5e-4)
    ply = client.get(body["urls"]["ply"]).content
    header, _, payload = ply.partition(b"end_header\n")
    count = int(header.split(b"element vertex ")[1].split(b"\n")[0])
    assert count == int((direct.depth_m > 0).sum()) and len(payload) == count * 15
    record = client.get(body["urls"]["record"]).json()
    assert record["camera_source"] == "given" and record["files"]["ply"] == "photo.ply"
    points = client.get(body["urls"]["points"]).content
    assert len(points) == body["points"]["count"] * 15 > 1000
    xyz = np.frombuffer(points[: body["points"]["count"] * 12], "<f4").reshape(-1, 3)
    stride = body["points"]["stride"]
    np.testing.assert_allclose(xyz[0], direct.points()[0, 0], rtol=1e-5)
    np.testing.assert_allclose(xyz[1], direct.points()[0, stride], rtol=1e-5)
    for kind in ("image", "depth_vis", "colorbar"):
        shown = Image.open(io.BytesIO(client.get(body["urls"][kind]).content))
        assert shown.size[0] > 1
    assert Image.open(io.BytesIO(client.get(body["urls"]["depth_vis"]).content)).size == (640, 480)
    assert "normal_vis" not in body["urls"] and body["outputs"] == []
    assert client.get(f"/api/results/{body['id']}").json() == body


def test_camera_sources_exif_focal_and_default(client):
    f35 = 28
    exif = jpeg_bytes((80, 60), exif_f35=f35)
    expected_f = f35 * math.hypot(80, 60) / math.hypot(36, 24)
    camera = client.post("/api/camera", files=image_field(exif)).json()
    assert camera["camera_source"] == "exif"
    assert camera["camera"]["fx"] == pytest.approx(expected_f)
    assert "FocalLengthIn35mmFilm" in camera["camera_rule"] or "f35" in camera["camera_rule"]
    body = post_ok(client, exif)
    assert body["camera_source"] == "exif" and body["camera"]["fx"] == pytest.approx(expected_f)

    body = post_ok(client, jpeg_bytes((80, 60)), focal="123.5")
    assert body["camera_source"] == "given"
    assert body["camera"] == {"fx": 123.5, "fy": 123.5, "cx": 39.5, "cy": 29.5, "width": 80,
                              "height": 60}  # fmt: skip

    body = post_ok(client, jpeg_bytes((80, 60)))
    assert body["camera_source"] == "default" and "60 degree" in body["camera_warning"]
    assert body["fov_x_deg"] == pytest.approx(60.0)


def test_measure_matches_the_python_api(client, model):
    data = jpeg_bytes((96, 72), seed=4)
    body = post_ok(client, data, focal="90")
    answer = client.post("/api/measure", json={"id": body["id"], "p1": [5, 7], "p2": [90, 60]})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    direct = predict(model, rgb, Camera(90.0, 90.0, 47.5, 35.5, 96, 72))
    expected = measure(direct, (5, 7), (90, 60), window=2)
    assert got["distance_m"] == pytest.approx(expected.distance_m, rel=1e-9)
    assert got["point2_m"] == pytest.approx(list(expected.point2_m), rel=1e-9)
    assert got["pixels"] == [[5, 7], [90, 60]] and got["camera_source"] == "given"
    # window 0: the pixels alone, computed here from the downloaded depth map
    one = client.post(
        "/api/measure", json={"id": body["id"], "p1": [5, 7], "p2": [90, 60], "window": 0}
    ).json()
    depth = np.load(io.BytesIO(client.get(body["urls"]["depth"]).content))
    cam = Camera(90.0, 90.0, 47.5, 35.5, 96, 72)
    here = measure(SimpleNamespace(depth_m=depth, camera=cam), (5, 7), (90, 60), window=0)
    assert one["distance_m"] == pytest.approx(here.distance_m, rel=1e-9) and one["window"] == 0


def test_normals_and_confidence_when_the_model_has_them(work_dir):
    with TestClient(create_app(extras_model(), work_dir=work_dir)) as client:
        body = post_ok(client, jpeg_bytes((64, 48)))
        assert body["outputs"] == ["normal", "confidence"]
        for kind in ("normal", "confidence", "normal_vis", "confidence_vis"):
            assert client.get(body["urls"][kind]).status_code == 200
        normal = np.load(io.BytesIO(client.get(body["urls"]["normal"]).content))
        assert normal.shape == (48, 64, 3)
        np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=1e-5)
        picture = Image.open(io.BytesIO(client.get(body["urls"]["normal_vis"]).content))
        assert picture.size == (64, 48)


# ---------------------------------------------------------------- bad requests
def _chunked(data: bytes, boundary: str = "xyzBOUNDARY"):
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    chunks = [head] + [data[i : i + 65536] for i in range(0, len(data), 65536)]
    chunks.append(f"\r\n--{boundary}--\r\n".encode())
    return iter(chunks), {"content-type": f"multipart/form-data; boundary={boundary}"}


BIG = 300_000  # bytes; the small-limit app below accepts 200_000


def _bad_requests():
    """(case, method, path, request kwargs, status, words the error must contain)."""
    jpg = jpeg_bytes()
    png = png_bytes((200, 150))
    return [
        ("over the size limit", "post", "/api/predict",
         {"files": image_field(jpg + b"\0" * BIG)}, 413, ["upload too large", "200000"]),
        ("over the limit, streamed without a length", "post", "/api/predict",
         "chunked", 413, ["upload too large"]),
        ("not an image", "post", "/api/predict",
         {"files": image_field(b"just some text\n" * 20, "notes.txt", "text/plain")}, 415,
         ["notes.txt", "not an image"]),
        ("empty file", "post", "/api/predict",
         {"files": image_field(b"", "empty.jpg")}, 415, ["empty.jpg", "not an image"]),
        ("truncated JPEG", "post", "/api/predict",
         {"files": image_field(jpg[: len(jpg) // 2], "half.jpg")}, 400,
         ["half.jpg", "truncated"]),
        ("truncated PNG", "post", "/api/predict",
         {"files": image_field(png[: len(png) // 2], "half.png", "image/png")}, 400,
         ["half.png", "cannot read image"]),
        ("decompression bomb", "post", "/api/predict",
         {"files": image_field(bomb_png(), "bomb.png", "image/png")}, 413,
         ["bomb.png", "decompression bomb"]),
        ("decompression bomb, camera", "post", "/api/camera",
         {"files": image_field(bomb_png(), "bomb.png", "image/png")}, 413,
         ["decompression bomb"]),
        ("not an image, camera", "post", "/api/camera",
         {"files": image_field(b"%PDF-1.4", "doc.pdf", "application/pdf")}, 415,
         ["doc.pdf", "not an image"]),
        ("intrinsics: three numbers", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"intrinsics": "500,500,32"}}, 400,
         ["intrinsics", "'500,500,32'"]),
        ("intrinsics: not numbers", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"intrinsics": "a,b,c,d"}}, 400, ["intrinsics"]),
        ("intrinsics: zero fx", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"intrinsics": "0,500,32,24"}}, 400,
         ["intrinsics", "fx must be a finite number > 0"]),
        ("intrinsics: negative fy", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"intrinsics": "500,-5,32,24"}}, 400,
         ["intrinsics"]),
        ("intrinsics: NaN", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"intrinsics": "nan,500,32,24"}}, 400,
         ["intrinsics", "finite"]),
        ("focal: zero", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"focal": "0"}}, 400, ["focal", "'0'"]),
        ("focal: negative", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"focal": "-300"}}, 400, ["focal", "> 0"]),
        ("focal: NaN", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"focal": "NaN"}}, 400, ["focal", "finite"]),
        ("focal: inf", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"focal": "inf"}}, 400, ["focal"]),
        ("focal: not a number", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"focal": "wide"}}, 400, ["focal", "'wide'"]),
        ("intrinsics and focal", "post", "/api/predict",
         {"files": image_field(jpg), "data": {"focal": "500", "intrinsics": "5,5,3,3"}}, 400,
         ["either intrinsics or focal"]),
        ("no image field", "post", "/api/predict",
         {"data": {"focal": "500"}}, 422, ["image", "required"]),
        ("measure: unknown id", "post", "/api/measure",
         {"json": {"id": "0123456789abcdef", "p1": [1, 1], "p2": [2, 2]}}, 404,
         ["id", "0123456789abcdef", "unknown"]),
        ("measure: malformed id", "post", "/api/measure",
         {"json": {"id": "../../etc", "p1": [1, 1], "p2": [2, 2]}}, 404, ["id", "unknown"]),
        ("measure: p1 outside the image", "post", "/api/measure",
         {"json": {"id": "VALID", "p1": [-1, 3], "p2": [2, 2]}}, 400,
         ["p1", "outside", "64x48"]),
        ("measure: p2 outside the image", "post", "/api/measure",
         {"json": {"id": "VALID", "p1": [1, 1], "p2": [64, 10]}}, 400,
         ["p2=(64, 10)", "outside"]),
        ("measure: p2 missing", "post", "/api/measure",
         {"json": {"id": "VALID", "p1": [1, 1]}}, 422, ["p2", "required"]),
        ("measure: fractional pixel", "post", "/api/measure",
         {"json": {"id": "VALID", "p1": [1.5, 1], "p2": [2, 2]}}, 422, ["p1[0]", "integer"]),
        ("measure: negative window", "post", "/api/measure",
         {"json": {"id": "VALID", "p1": [1, 1], "p2": [2, 2], "window": -1}}, 422,
         ["window"]),
        ("measure: not JSON", "post", "/api/measure",
         {"content": b"p1=1,1", "headers": {"content-type": "application/json"}}, 422,
         ["request body", "not valid json"]),
        ("download: unknown id", "get", "/api/results/fedcba9876543210/ply", {}, 404,
         ["fedcba9876543210"]),
        ("download: unknown kind", "get", "/api/results/VALID/passwd", {}, 404,
         ["'passwd'", "available"]),
        ("result: unknown id", "get", "/api/results/nothing-here", {}, 404, ["nothing-here"]),
    ]  # fmt: skip


BAD_REQUESTS = _bad_requests()


@pytest.fixture(scope="module")
def limited(work_dir):
    """An app with a 200 kB upload limit, and one valid result id to measure on."""
    with TestClient(create_app(tiny_model(), max_upload_bytes=200_000, work_dir=work_dir)) as c:
        yield c, post_ok(c, jpeg_bytes((64, 48)))["id"]


@pytest.mark.parametrize(
    "case, method, path, kwargs, status, words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_is_refused_clearly_and_the_server_goes_on(
    limited, case, method, path, kwargs, status, words
):
    client, valid_id = limited
    before = result_folders(client)
    if kwargs == "chunked":
        body, headers = _chunked(jpeg_bytes() + b"\0" * BIG)
        kwargs = {"content": body, "headers": headers}
    kwargs = dict(kwargs)
    path = path.replace("VALID", valid_id)
    if "json" in kwargs:
        kwargs["json"] = {k: (valid_id if v == "VALID" else v) for k, v in kwargs["json"].items()}
    answer = getattr(client, method)(path, **kwargs)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    assert result_folders(client) == before  # nothing left behind by the failed request
    # ... and the server still serves
    assert client.get("/api/health").json()["status"] == "ok"
    again = client.post("/api/measure", json={"id": valid_id, "p1": [0, 0], "p2": [63, 47]})
    assert again.status_code == 200


def test_the_bad_request_catalogue_is_complete():
    """Every kind of bad request the web issue names is in the table above."""
    cases = " | ".join(b[0] for b in BAD_REQUESTS)
    for kind in ("size limit", "not an image", "truncated", "decompression bomb",
                 "intrinsics", "focal: zero", "focal: negative", "focal: NaN", "unknown id",
                 "outside the image"):  # fmt: skip
        assert kind in cases
    assert len(BAD_REQUESTS) >= 30


def test_default_upload_limit_is_25_mb(client):
    too_big = jpeg_bytes() + b"\0" * DEFAULT_MAX_UPLOAD_BYTES
    answer = client.post("/api/predict", files=image_field(too_big))
    assert answer.status_code == 413 and "25000000" in answer.json()["error"]
    assert client.get("/api/health").status_code == 200


# ---------------------------------------------------------------- queueing and cleanup
def test_a_real_server_refuses_big_uploads_with_the_message_and_goes_on(work_dir, model):
    """Through uvicorn and a socket: the client reads the 413 and its message (the server
    answers before reading the body, or cuts a body that streams past the limit)."""
    with running(create_app(model, max_upload_bytes=200_000, work_dir=work_dir)) as url:
        for size in (300_000, 30_000_000):
            files = image_field(jpeg_bytes() + b"\0" * size)
            answer = httpx.post(f"{url}/api/predict", files=files, timeout=60)
            assert answer.status_code == 413 and "upload too large" in answer.json()["error"]
        body, headers = _chunked(jpeg_bytes() + b"\0" * 5_000_000)
        answer = httpx.post(f"{url}/api/predict", content=body, headers=headers, timeout=60)
        assert answer.status_code == 413 and "upload too large" in answer.json()["error"]
        answer = httpx.post(f"{url}/api/predict", files=image_field(jpeg_bytes()), timeout=60)
        assert answer.status_code == 200 and answer.json()["points"]["count"] == 64 * 48


def test_concurrent_predictions_are_queued_not_crashed(work_dir):
    gauge = Gauge()
    net = DepthModel(TINY_SPEC, gauge).eval()
    data = [jpeg_bytes((64, 48), seed=k % 2) for k in range(6)]
    start = threading.Barrier(len(data))
    answers: list = [None] * len(data)

    with running(create_app(net, work_dir=work_dir, max_results=8)) as url:

        def post(k: int) -> None:
            start.wait()
            answers[k] = httpx.post(f"{url}/api/predict", files=image_field(data[k]), timeout=60)

        threads = [threading.Thread(target=post, args=(k,)) for k in range(len(data))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert httpx.get(f"{url}/api/health").json()["results"] == len(data)
    assert all(a is not None and a.status_code == 200 for a in answers), answers
    assert gauge.calls == len(data) and gauge.most == 1  # one at a time, all of them done
    bodies = [a.json() for a in answers]
    assert len({b["id"] for b in bodies}) == len(data)
    for k, body in enumerate(bodies):  # each answer is its own image's (no mix-up)
        assert body["depth_m"] == bodies[k % 2]["depth_m"]
    assert bodies[0]["depth_m"] != bodies[1]["depth_m"]


def test_other_endpoints_answer_while_many_predictions_queue(work_dir):
    """More queued predictions than the server has pool threads (40): health, camera and
    measure still answer at once, and every prediction finishes in turn."""
    gauge = Gauge()
    gauge.delay_s = 0.1
    net = DepthModel(TINY_SPEC, gauge).eval()
    count = 60
    answers: list = [None] * count
    with running(create_app(net, work_dir=work_dir, max_results=count)) as url:
        first = httpx.post(f"{url}/api/predict", files=image_field(jpeg_bytes()), timeout=60)
        first_id = first.json()["id"]

        def post(k: int) -> None:
            answers[k] = httpx.post(
                f"{url}/api/predict", files=image_field(jpeg_bytes()), timeout=120
            )

        threads = [threading.Thread(target=post, args=(k,)) for k in range(count)]
        for thread in threads:
            thread.start()
        while gauge.calls < 3:  # the queue is being worked through
            time.sleep(0.01)
        health = httpx.get(f"{url}/api/health", timeout=60)
        camera = httpx.post(f"{url}/api/camera", files=image_field(jpeg_bytes()), timeout=60)
        measure = httpx.post(
            f"{url}/api/measure", json={"id": first_id, "p1": [1, 1], "p2": [40, 30]}, timeout=60
        )
        pending = count + 1 - gauge.calls  # predictions not yet started when all three answered
        for thread in threads:
            thread.join(120)
    assert health.status_code == camera.status_code == measure.status_code == 200
    # behind a lock held across the server's 40 pool threads they would have waited for at
    # least 21 predictions (61 - 40); here they did not wait for the queue at all
    assert pending > 45, pending
    assert all(a is not None and a.status_code == 200 for a in answers)
    assert gauge.calls == count + 1 and gauge.most == 1


def test_a_download_evicted_after_its_lookup_is_a_404_not_a_500(client, monkeypatch):
    """The result's folder vanishes between the store lookup and the sending of the file
    (a newer prediction evicted it): the answer is the 404 "expired", never a 500."""
    import shutil

    import metricdepth.web.app as web_app

    body = post_ok(client, jpeg_bytes())
    real = web_app._lookup

    def evicting_lookup(store, result_id):
        result = real(store, result_id)
        shutil.rmtree(result.folder)  # gone right after the lookup found it
        return result

    monkeypatch.setattr(web_app, "_lookup", evicting_lookup)
    monkeypatch.setattr(Path, "is_file", lambda self: True)  # whatever a check saw before
    answer = client.get(body["urls"]["ply"])
    assert answer.status_code == 404 and "expired" in answer.json()["error"]
    monkeypatch.undo()
    assert client.get("/api/health").json()["status"] == "ok"


def test_store_is_bounded_and_cleaned_up_on_shutdown(tmp_path, model):
    app = create_app(model, work_dir=tmp_path, max_results=2)
    root = app.state.store.root
    with TestClient(app) as client:
        ids = [post_ok(client, jpeg_bytes(seed=k))["id"] for k in range(3)]
        assert sorted(p.name for p in root.iterdir()) == sorted(ids[1:])
        gone = client.post("/api/measure", json={"id": ids[0], "p1": [1, 1], "p2": [2, 2]})
        assert gone.status_code == 404 and "expired" in gone.json()["error"]
        assert client.get(f"/api/results/{ids[0]}/ply").status_code == 404
        assert client.get(f"/api/results/{ids[2]}/ply").status_code == 200
        assert client.get("/api/health").json()["results"] == 2
        assert not list(root.glob("*/upload*")) and not list(root.rglob(".*.tmp*"))
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_serve_without_the_web_extra_says_what_to_install(monkeypatch):
    from typer.testing import CliRunner

    from metricdepth.cli import app

    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "pip install 'metricdepth[web]'" in lines[0]


def test_a_small_upload_of_a_huge_flat_image_is_refused_by_its_pixel_count(work_dir):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (120, 130, 140)).save(buffer, format="PNG")
    flat = buffer.getvalue()
    assert len(flat) < 200_000  # far under the byte limit
    app = create_app(tiny_model(), max_pixels=10_000_000, work_dir=work_dir)
    with TestClient(app) as client:
        before = result_folders(client)
        answer = client.post("/api/predict", files=image_field(flat, "flat.png", "image/png"))
        assert answer.status_code == 413, answer.text
        message = answer.json()["error"]
        assert message.startswith("image flat.png: 4000x3000 pixels is over the limit of")
        assert "\n" not in message and result_folders(client) == before
        assert client.get("/api/health").status_code == 200
        assert post_ok(client, jpeg_bytes((64, 48)))["camera_source"] == "default"


@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_serve_binds_localhost_unless_told(monkeypatch, host):
    from typer.testing import CliRunner

    from metricdepth.cli import app

    calls = []
    fake = SimpleNamespace(run=lambda web, **kwargs: calls.append((web, kwargs)))
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", fake)
    args = ["serve", "--port", "8123", "--max-upload-mb", "2"]
    result = CliRunner().invoke(app, args + (["--host", host] if host else []))
    assert result.exit_code == 0, result.output
    ((web, kwargs),) = calls
    assert kwargs["host"] == (host or "127.0.0.1") and kwargs["port"] == 8123
    assert web.state.model.spec.name == "metricdepth-small"
    with TestClient(web) as client:
        assert client.get("/api/health").json()["max_upload_bytes"] == 2_000_000
    assert ("warning: serving on 0.0.0.0" in result.output) == (host is not None)
    trust = [line for line in result.output.splitlines() if "For real photos:" in line]
    assert len(trust) == 1 and trust[0].startswith("warning: metricdepth-small")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--max-megapixels", "-1"], "--max-megapixels"),
        (["--model", "no-such-model"], "no-such"),
    ],
)
def test_serve_refuses_bad_options_in_one_line(args, words):
    from typer.testing import CliRunner

    from metricdepth.cli import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert words in result.output and "Traceback" not in result.output
