"""The local web page's server: a FastAPI app over the same Python API as the command line.

``create_app(model)`` returns the app that ``metricdepth serve`` runs with uvicorn:

* ``GET /`` the page (static HTML/JS/CSS shipped in the package, nothing fetched);
* ``GET /api/health`` the model, its outputs and the upload limit;
* ``POST /api/camera`` (multipart ``image``) the camera ``predict`` would use: EXIF intrinsics
  or the announced default, with the source (the page prefills its fields with it);
* ``POST /api/predict`` (multipart ``image``, optional ``intrinsics="fx,fy,cx,cy"`` or
  ``focal`` in pixels) -> depth statistics, the camera used and its source, artefact URLs;
* ``POST /api/measure`` (JSON ``{"id", "p1": [u, v], "p2": [u, v]}``) -> metres between the
  3-D points under two pixels (``metricdepth.measure.measure``);
* ``GET /api/results/{id}/{kind}`` an artefact: ``depth`` (.npy), ``png16`` (16-bit PNG, mm),
  ``ply``, ``record`` (JSON), ``normal``/``confidence`` (.npy) when the model has them, and the
  pictures the page shows (``image``, ``depth_vis``, ``normal_vis``, ``confidence_vis``,
  ``colorbar``, ``points``: the viewer's subsampled point cloud);
* ``GET /docs`` FastAPI's OpenAPI page (Swagger UI) of ``/openapi.json``, its JavaScript and
  CSS served by this app from the installed ``fastapi-offline`` package (the web extra) under
  ``/docs-assets/``, nothing from a CDN; without that package ``/docs`` answers 503 saying
  what to install. No ``/redoc``: ReDoc always fetches its logo from a CDN.

Bad requests get a 4xx answer ``{"error": "one line"}`` and the server goes on: an upload over
``max_upload_bytes`` (413, refused from its Content-Length before it is read, or while it
streams), not an image (415), a truncated image (400), a decompression bomb (413, Pillow's
pixel limit), malformed intrinsics or a focal that is not a finite number > 0 (400), an
unknown result id (404), measure pixels outside the image (400). Predictions run one at a time
on one worker thread; concurrent requests wait their turn in its queue without holding a
thread of the server's pool, so the other endpoints answer while many predictions queue.
Results live in a bounded ``ResultStore`` whose folder is deleted when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
import PIL.Image
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from metricdepth.models.registry import DepthModel, load_model, provenance
from metricdepth.web.store import Result, ResultStore

#: Default upload limit: 25 MB.
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1000 * 1000
#: Default pixel limit: a flat PNG of this size is tiny, but its depth, points and PLY are not.
DEFAULT_MAX_PIXELS = 50_000_000
#: Multipart overhead allowed on top of the image itself (boundaries, the small form fields).
FORM_OVERHEAD_BYTES = 64 * 1024
#: At most this many points go to the page's 3-D viewer (the PLY download has them all).
VIEWER_POINTS = 120_000
#: Extra files written for every prediction (``metricdepth.files.SAVE_KINDS``).
SAVED_KINDS = {"depth", "png16", "normal", "confidence", "ply"}

STATIC = Path(__file__).parent / "static"
#: Where the API page's own files (Swagger UI, from fastapi-offline) are served from.
DOCS_ASSETS = "/docs-assets"

_MEDIA_TYPES = {
    ".npy": "application/octet-stream",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ply": "application/octet-stream",
    ".json": "application/json",
    ".bin": "application/octet-stream",
}


class ErrorAnswer(BaseModel):
    """Every 4xx/5xx answer: one line saying which field is wrong and why."""

    error: str


class HealthAnswer(BaseModel):
    status: str = Field(description='"ok" while the server serves.')
    model: str = Field(description="Registered name of the loaded model.")
    outputs: list[str] = Field(description='Besides depth: "normal", "confidence".')
    intended_use: dict[str, Any] = Field(
        description='What the model is meant for: {"real_photos": true/false/null, "text": ...}.'
    )
    warnings: list[str] = Field(
        description="One line when the model is not meant for real photographs (shown on the "
        "page and returned with every prediction)."
    )
    max_upload_bytes: int
    results: int = Field(description="Predictions currently kept (oldest deleted first).")
    max_results: int


class MeasureRequest(BaseModel):
    id: str = Field(description="The id returned by /api/predict.")
    p1: tuple[int, int] = Field(description="First pixel (u, v) = (column, row).")
    p2: tuple[int, int] = Field(description="Second pixel (u, v).")
    window: int = Field(2, ge=0, le=50, description="Median window half-size in pixels.")


class MeasureAnswer(BaseModel):
    distance_m: float
    point1_m: list[float]
    point2_m: list[float]
    depth1_m: float
    depth2_m: float
    pixels: list[list[int]]
    window: int
    camera_source: str


_BAD = {
    400: {"model": ErrorAnswer, "description": "Malformed field or unreadable image."},
    404: {"model": ErrorAnswer, "description": "Unknown result id."},
    413: {"model": ErrorAnswer, "description": "Upload or image too large."},
    415: {"model": ErrorAnswer, "description": "Not an image."},
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class UploadLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413.

    A declared Content-Length over the limit is refused before anything is read; a body that
    streams past the limit (no or a false Content-Length) is cut off and answered 413 too.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        message = (
            f"upload too large: the limit is {self.limit - FORM_OVERHEAD_BYTES} bytes "
            "(metricdepth serve --max-upload-mb)"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _error(413, message)(scope, receive, send)
            return
        state = {"received": 0, "over": False, "started": False}

        async def counted_receive():
            event = await receive()
            if event["type"] == "http.request":
                state["received"] += len(event.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return event

        async def guarded_send(event) -> None:
            if state["over"]:  # whatever the app answers to a cut-off body, the answer is 413
                if event["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _error(413, message)(scope, receive, send)
                return
            await send(event)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
            if not state["started"]:
                await _error(413, message)(scope, receive, send)


def _fastapi_app(**settings) -> FastAPI:
    """A FastAPI app whose ``/docs`` loads nothing from a CDN.

    ``fastapi-offline`` ships Swagger UI and serves it from the app itself (FastAPI's own page
    would fetch it from a CDN and stay blank offline). Without that package ``/docs`` answers
    503 saying what to install (``/openapi.json`` is still served). ReDoc is left out: even
    served locally it fetches its logo from a CDN. (``swagger-ui-bundle`` is no substitute: it
    ships Swagger UI 4, which refuses FastAPI's OpenAPI 3.1 schema.)
    """
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        pass
    else:  # no validator badge: Swagger UI would ask an online validator for it
        return FastAPIOffline(
            redoc_url=None,
            static_url=DOCS_ASSETS,
            swagger_ui_parameters={"validatorUrl": None},
            **settings,
        )
    app = FastAPI(docs_url=None, redoc_url=None, **settings)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(
            "<!DOCTYPE html><title>metricdepth API</title><p>error: the API page needs the "
            "fastapi-offline package: pip install 'metricdepth[web]'. The schema is at "
            f'<a href="{app.openapi_url}">{app.openapi_url}</a>.</p>',
            status_code=503,
        )

    return app


def _safe_stem(filename: str | None) -> str:
    """A harmless file stem from an uploaded file's name (default ``photo``)."""
    stem = Path(str(filename or "")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:64]
    return stem or "photo"


def _image_problem(error: ValueError, path: Path, name: str) -> HTTPException:
    """A decoding error of the saved upload -> 4xx naming the uploaded file, not the temp path."""
    text = str(error).replace(str(path), name)
    if "decompression bomb" in text:
        return HTTPException(413, f"image {text}")
    if "not an image" in text:
        return HTTPException(415, f"image {text}")
    return HTTPException(400, f"image {text}")


def _parse_focal(text: str | None) -> float | None:
    from metricdepth.cameras import check_focal

    if text is None or not text.strip():
        return None
    try:
        return check_focal(text)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None


def _parse_intrinsics(text: str | None) -> tuple[float, ...] | None:
    """The form's ``"fx,fy,cx,cy"`` (or ``"...@WxH"``) checked like the CLI's ``--intrinsics``."""
    from metricdepth.cameras import parse_intrinsics

    if text is None or not text.strip():
        return None
    try:
        return parse_intrinsics(text)
    except ValueError as error:
        raise HTTPException(400, str(error)) from None


def _encode(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 picture atomically (format from the suffix)."""
    from metricdepth.io import atomic_write

    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else []
    ok, data = cv2.imencode(path.suffix, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"could not encode {path.name}")
    with atomic_write(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path


def _viewer_points(prediction, rgb: np.ndarray, path: Path) -> tuple[int, int]:
    """The viewer's cloud: every ``stride``-th valid point as float32 xyz, then uint8 rgb.

    Returns ``(count, stride)``; the file is ``count * 12`` bytes of points then ``count * 3``.
    """
    from metricdepth.io import atomic_write

    height, width = prediction.depth_m.shape
    stride = max(1, math.ceil(math.sqrt(height * width / VIEWER_POINTS)))
    points = prediction.points()[::stride, ::stride]
    colours = rgb[::stride, ::stride]
    valid = (prediction.depth_m[::stride, ::stride] > 0) & np.isfinite(points).all(axis=-1)
    xyz = np.ascontiguousarray(points[valid], dtype="<f4")
    with atomic_write(path) as tmp:
        tmp.write_bytes(xyz.tobytes() + np.ascontiguousarray(colours[valid]).tobytes())
    return len(xyz), stride


def _write_result(
    result_id: str, folder: Path, stem: str, prediction, rgb: np.ndarray, report: dict,
    about: dict[str, Any] | None = None,
) -> Result:  # fmt: skip
    """Every artefact of one prediction (the package's writers) and the /api/predict answer.

    ``about``: what made it (``models.registry.provenance`` and the upload's name as
    ``input``), recorded in the JSON record and returned in the answer."""
    from metricdepth.files import write_prediction
    from metricdepth.vis import colorize_depth, inverse_depth_range

    about = about or {}
    written = write_prediction(prediction, rgb, folder, stem, SAVED_KINDS, about=about)
    files = {kind: (path, path.name) for kind, path in written.items()}
    views = folder / "views"
    views.mkdir()
    files["image"] = (_encode(views / "image.jpg", rgb), f"{stem}.jpg")
    files["depth_vis"] = (
        _encode(views / "depth_vis.png", colorize_depth(prediction.depth_m)),
        f"{stem}.depth_vis.png",
    )
    ramp = np.linspace(0.0, 1.0, 256)[None, :]  # far (cold) -> near (warm), linear in 1/m
    bar = cv2.applyColorMap((ramp * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[:, :, ::-1]
    files["colorbar"] = (_encode(views / "colorbar.png", np.repeat(bar, 8, 0)), "colorbar.png")
    if prediction.normal is not None:
        normal_rgb = np.clip((prediction.normal * -0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
        files["normal_vis"] = (_encode(views / "normal_vis.png", normal_rgb), f"{stem}.normal.png")
    if prediction.confidence is not None:
        conf = prediction.confidence.astype(np.float64)
        low, high = np.percentile(conf, [2, 98]) if conf.size else (0.0, 1.0)
        grey = np.clip((conf - low) / max(high - low, 1e-12), 0, 1)
        viridis = cv2.applyColorMap((grey * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
        files["confidence_vis"] = (
            _encode(views / "confidence_vis.png", viridis[:, :, ::-1]),
            f"{stem}.confidence.png",
        )
    count, stride = _viewer_points(prediction, rgb, views / "points.bin")
    files["points"] = (views / "points.bin", f"{stem}.points.bin")

    record = json.loads(written["record"].read_text())
    low, high = inverse_depth_range(prediction.depth_m)
    camera = prediction.camera
    summary = {
        "id": result_id,
        "image": {"name": stem, "width": camera.width, "height": camera.height},
        "model": prediction.model,
        "metricdepth_version": record.get("metricdepth_version"),
        "weights_sha256": record.get("weights_sha256"),
        "intended_use": record.get("intended_use"),
        "warnings": record.get("warnings", []),
        "outputs": [k for k in ("normal", "confidence") if getattr(prediction, k) is not None],
        "camera": camera.to_dict(),
        "camera_source": prediction.camera_source,
        "camera_rule": report.get("rule"),
        "camera_warning": report.get("warning"),
        "fov_x_deg": camera.fov_x_deg,
        "fov_y_deg": camera.fov_y_deg,
        "depth_m": record["depth_m"],
        "canonical": record["canonical"],
        "timings_ms": record.get("timings_ms", {}),
        "colormap": {
            "name": "turbo",
            "linear_in": "inverse depth (1/m)",
            "near_m": 1.0 / high if high > 0 else None,
            "far_m": 1.0 / low if low > 0 else None,
        },
        "points": {"count": count, "stride": stride},
        "urls": {kind: f"/api/results/{result_id}/{kind}" for kind in files},
    }
    # Measuring needs only the depth and the camera: the rest stays on disk, not in memory.
    slim = replace(prediction, normal=None, confidence=None)
    return Result(result_id, folder, slim, files, summary)


def create_app(
    model: DepthModel | str | Path | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_results: int = 8,
    work_dir: Path | None = None,
) -> FastAPI:
    """The web app around ``model`` (a loaded ``DepthModel``, a name/file for ``load_model``,
    or None for the bundled default).

    Args:
        max_upload_bytes: largest accepted image upload (413 above it).
        max_pixels: largest accepted image, width x height (413 above it, read from the
            file's header before decoding: a small upload can hold a huge flat image).
        max_results: predictions kept for measuring and downloads (oldest deleted first).
        work_dir: where the temporary results folder is made (default: the system's temp).
    """
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    net = model if isinstance(model, DepthModel) else load_model(model)
    made_by = provenance(net)  # version, name, weights SHA-256, intended use, warnings
    store = ResultStore(max_results, work_dir)
    # one prediction at a time: the others wait in this executor's queue, not on a lock held
    # across the server's thread pool (40 queued requests would otherwise block every endpoint)
    runner = ThreadPoolExecutor(1, thread_name_prefix="metricdepth-predict")

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        try:
            yield
        finally:
            runner.shutdown(wait=True, cancel_futures=True)
            store.close()

    app = _fastapi_app(
        title="metricdepth",
        summary="Metric depth from one photo of any camera.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.model = net
    app.state.store = store
    app.add_middleware(UploadLimit, limit=max_upload_bytes + FORM_OVERHEAD_BYTES)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        parts = []
        for item in error.errors():
            if item.get("type") == "json_invalid":
                parts.append(f"request body: not valid JSON ({item.get('ctx', {}).get('error')})")
                continue
            where = ""
            for part in item.get("loc", ()):
                if part in ("body", "query", "path"):
                    continue
                where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else part
            parts.append(f"{where or 'request'}: {item.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(error).__name__}: {error}")

    def receive_image(image: UploadFile) -> tuple[str, Path, Path]:
        """Save an upload into a fresh result folder: ``(id, folder, path)``, size checked."""
        name = Path(str(image.filename or "photo")).name or "photo"
        if image.size is not None and image.size > max_upload_bytes:
            raise HTTPException(
                413, f"image {name}: {image.size} bytes is over the limit of {max_upload_bytes}"
            )
        result_id, folder = store.new_folder()
        path = folder / f"upload{Path(name).suffix.lower()[:8]}"
        try:
            with open(path, "wb") as handle:
                shutil.copyfileobj(image.file, handle, 1 << 20)
        except BaseException:
            store.discard(folder)
            raise
        if path.stat().st_size > max_upload_bytes:
            store.discard(folder)
            raise HTTPException(413, f"image {name}: over the limit of {max_upload_bytes} bytes")
        return result_id, folder, path

    def decode(image: UploadFile, path: Path, intrinsics, focal):
        """The RGB as displayed, the camera, its source and report (``cameras.resolve_camera``)."""
        from metricdepth.cameras import resolve_camera
        from metricdepth.io import read_image

        name = Path(str(image.filename or "photo")).name or "photo"
        try:  # the size from the header; an unreadable file gets read_image's message below
            with warnings.catch_warnings(), PIL.Image.open(path) as header:
                warnings.simplefilter("ignore")
                width, height = header.size
        except Exception:
            width = height = 0
        if width * height > max_pixels:
            raise HTTPException(
                413,
                f"image {name}: {width}x{height} pixels is over the limit of {max_pixels} "
                "pixels (metricdepth serve --max-megapixels)",
            )
        try:
            rgb, _ = read_image(path)
        except ValueError as error:
            raise _image_problem(error, path, name) from None
        try:
            camera, source, report = resolve_camera(path, intrinsics=intrinsics, focal=focal)
        except ValueError as error:
            raise HTTPException(400, str(error).replace(str(path), name)) from None
        return rgb, camera, source, report

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health", response_model=HealthAnswer, summary="Is the server up")
    def health() -> dict:
        return {
            "status": "ok",
            "model": net.spec.name,
            "outputs": list(net.spec.outputs),
            "intended_use": made_by["intended_use"],
            "warnings": made_by["warnings"],
            "max_upload_bytes": max_upload_bytes,
            "results": len(store),
            "max_results": store.max_results,
        }

    @app.post("/api/camera", responses=_BAD, summary="The camera of a photo (EXIF or default)")
    def camera(image: Annotated[UploadFile, File(description="The photo.")]) -> dict[str, Any]:
        """The intrinsics ``/api/predict`` would use for this photo without ``intrinsics`` or
        ``focal``: from its EXIF focal length, else a stated default field of view."""
        _, folder, path = receive_image(image)
        try:
            _, cam, source, report = decode(image, path, None, None)
        finally:
            store.discard(folder)
        return {
            "camera": cam.to_dict(),
            "camera_source": source,
            "camera_rule": report["rule"],
            "camera_warning": report["warning"],
            "fov_x_deg": cam.fov_x_deg,
            "fov_y_deg": cam.fov_y_deg,
        }

    @app.post("/api/predict", responses=_BAD, summary="Metric depth of a photo")
    async def predict_image(
        image: Annotated[UploadFile, File(description="The photo (JPEG, PNG, TIFF, ...).")],
        intrinsics: Annotated[
            str | None, Form(description='"fx,fy,cx,cy" in pixels of the image as displayed.')
        ] = None,
        focal: Annotated[
            str | None, Form(description="Focal length in pixels (principal point centred).")
        ] = None,
    ) -> dict[str, Any]:
        """Run the model on the photo. The camera is ``intrinsics``, else ``focal``, else the
        photo's EXIF focal, else a stated default; the answer says which (``camera_source``).
        Predictions run one at a time; concurrent requests wait their turn."""
        from metricdepth.cameras import check_one_camera
        from metricdepth.pipeline import predict

        values = _parse_intrinsics(intrinsics)
        focal_px = _parse_focal(focal)
        try:
            check_one_camera(values, focal_px)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        stem = _safe_stem(image.filename)
        result_id, folder, path = await run_in_threadpool(receive_image, image)

        def run() -> Result:
            rgb, cam, source, report = decode(image, path, values, focal_px)
            path.unlink()
            prediction = predict(net, rgb, cam, camera_source=source)
            about = {**made_by, "input": image.filename or stem}
            return _write_result(result_id, folder, stem, prediction, rgb, report, about)

        try:
            result = await asyncio.wrap_future(runner.submit(run))
        except BaseException:
            store.discard(folder)
            raise
        store.add(result)
        return result.summary

    @app.post(
        "/api/measure",
        response_model=MeasureAnswer,
        responses=_BAD,
        summary="Distance in metres between two pixels",
    )
    def measure_pixels(request: MeasureRequest) -> dict[str, Any]:
        """The 3-D points under two pixels of a prediction and their distance in metres
        (each depth is the median of a ``(2 * window + 1)^2`` neighbourhood)."""
        from metricdepth.measure import measure

        result = store.get(request.id)
        if result is None:
            raise HTTPException(404, f"id: no result {request.id!r} (unknown or expired)")
        try:
            answer = measure(result.prediction, request.p1, request.p2, window=request.window)
        except ValueError as error:
            raise HTTPException(400, str(error)) from None
        return {**answer.to_dict(), "camera_source": result.prediction.camera_source}

    @app.get("/api/results/{result_id}", responses=_BAD, summary="The answer of a prediction")
    def result_summary(result_id: str) -> dict[str, Any]:
        return _lookup(store, result_id).summary

    @app.get(
        "/api/results/{result_id}/{kind}",
        responses=_BAD,
        summary="An artefact of a prediction",
        response_class=FileResponse,
    )
    def artefact(result_id: str, kind: str) -> StreamingResponse:
        """``depth`` (.npy, float32 metres), ``png16`` (uint16 millimetres), ``ply``, ``record``
        (JSON), ``normal``/``confidence`` (.npy, when the model has them), and the page's
        pictures: ``image``, ``depth_vis``, ``normal_vis``, ``confidence_vis``, ``colorbar``,
        ``points``."""
        result = _lookup(store, result_id)
        if kind not in result.files:
            known = ", ".join(sorted(result.files))
            raise HTTPException(404, f"kind: no {kind!r} for this result; available: {known}")
        path, name = result.files[kind]
        try:  # opened here: a result evicted from now on is still sent whole (POSIX), and one
            # evicted already is a 404, not a failure while sending
            handle = open(path, "rb")  # noqa: SIM115 - closed by the response's iterator
        except (FileNotFoundError, NotADirectoryError):
            raise HTTPException(404, f"id: result {result_id!r} has expired") from None
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            with handle:
                while block := handle.read(1 << 16):
                    yield block

        inline = kind in ("image", "depth_vis", "normal_vis", "confidence_vis", "colorbar")
        disposition = "inline" if inline else "attachment"
        return StreamingResponse(
            chunks(),
            media_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
            headers={
                "content-length": str(size),
                "content-disposition": f'{disposition}; filename="{name}"',
            },
        )

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _lookup(store: ResultStore, result_id: str) -> Result:
    result = store.get(result_id)
    if result is None:
        raise HTTPException(404, f"id: no result {result_id!r} (unknown or expired)")
    return result


def _version() -> str:
    from metricdepth import __version__

    return __version__
