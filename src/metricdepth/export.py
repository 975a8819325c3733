"""ONNX export of a whole prediction: image + focal length in, metric depth out.

``export_onnx(model, path)`` writes one self-describing ONNX file whose graph does every step
of ``predict`` for a model with ``CanonicalSpace.resize == "fit"`` (all registered models):

1. **fit-resize and pad** the (H, W, 3) RGB image (any H, W: both axes are dynamic) onto the
   model's fixed canvas ``input_hw``: ``s = min(H_in / H, W_in / W)`` in float64, resized
   size ``(int(H s), int(W s))``, the ``pad_rgb`` border placed like ``inference_record``;
2. **normalise** ``(x - mean) / std`` in float32;
3. run the **network**;
4. **un-pad**, resize bilinearly (``align_corners=False``, float32 source coordinates, as
   torch) back to (H, W), and **de-canonicalise** ``depth_m = depth_c * f_eff / f_c`` with
   ``f_eff = focal_px * s``; clamp to ``[0, max_depth_m]`` where the spec has a clamp.

Resize in the graph. The PyTorch path resizes with OpenCV's uint8 ``INTER_LINEAR``, which is
fixed-point arithmetic (11-bit weights, a vertical pass with shifts); a float bilinear differs
by one grey level at about 11 % of pixels. The graph therefore re-computes OpenCV's integer
scheme with integer tensor ops (``_opencv_linear_canvas``): the source coordinates and the
rounding of the weights as OpenCV computes them, the horizontal integer sum, and the vertical
``((b0 (S0 >> 4)) >> 16 + (b1 (S1 >> 4)) >> 16 + 2) >> 2`` of its SIMD kernel. OpenCV's
scalar tail of each row rounds as ``(v + 2^21) >> 22`` instead, which can differ by one grey
level, and exact 2x reductions are taken over by ``INTER_AREA`` (same values as this scheme).
Measured: the in-graph canvas equals ``cv2.resize`` + padding bit for bit on all nine fixture
image / canvas pairs (kitti, nyu, wild onto 616x1064, 544x1216 and 96x128) and on the cases
of ``tests/test_onnx.py`` (up-scaling, 2x reduction, identity); equality is tested, not
guaranteed for every size and OpenCV build.

Inputs: ``image`` (H, W, 3) uint8 RGB (or float32 0-255 RGB, rounded to uint8 first, with
``image_dtype="float32"``), and ``focal_px`` (1,) float32: the focal length under the model's
focal mode (``Camera.focal``), or with ``camera_input="intrinsics"`` ``intrinsics`` (4,)
float32 ``fx, fy, cx, cy`` and the focal mode applied in the graph. Outputs: ``depth`` (H, W)
float32 metres, ``confidence`` (H, W) and ``normal`` (H, W, 3) where the model has them, and
``canonical`` (6,) float64: the record the graph used (``canonical.GRAPH_RECORD``: resize
factor, resized height and width, top and left offsets, metric scale), which the ONNX Runtime
backend reports instead of recomputing it.

The record's arithmetic is not re-derived here: ``PredictionGraph`` runs
``canonical.fit_geometry`` (fit scale, resized size, offsets), ``camera.focal_of`` and
``canonical.metric_scale`` on the image's dynamic size, the functions ``inference_record``
runs on Python floats. What stays graph-specific are the two resamplings, written as gathers
so that they match OpenCV and torch to the bit (below).

The file's ``metadata_props`` describe it (``metricdepth.spec``: the full ``ModelSpec`` JSON,
plus the model name, canonical focal, input size, focal mode, camera input and the metricdepth
version), so ``metricdepth.runtime.load_onnx`` needs nothing else.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from metricdepth.camera import focal_of
from metricdepth.canonical import fit_geometry, metric_scale
from metricdepth.io import atomic_write
from metricdepth.models.registry import DepthModel
from metricdepth.models.spec import ONNX_FORMAT as FORMAT
from metricdepth.models.spec import ONNX_META_FORMAT as META_FORMAT
from metricdepth.models.spec import ONNX_META_SPEC as META_SPEC
from metricdepth.models.spec import ModelSpec

CAMERA_INPUTS = ("focal", "intrinsics")
IMAGE_DTYPES = ("uint8", "float32")
OPSET = 18

#: OpenCV's ``INTER_RESIZE_COEF_BITS`` fixed-point scale of the linear weights.
_COEF_SCALE = 2048


def _shape_hw(image: Tensor) -> Tensor:
    """(H, W) of an (H, W, C) tensor as an int64 (2,) tensor (dynamic in an exported graph)."""
    return torch.tensor([image.shape[0], image.shape[1]], dtype=torch.int64)


def _cv_axis(positions: Tensor, n_out: Tensor, n_in: Tensor) -> tuple[Tensor, Tensor]:
    """Source index and float32 fraction of output ``positions`` along one axis, as OpenCV.

    ``f = float32((d + 0.5) * (1 / (n_out / n_in)) - 0.5)`` in float64, ``s = floor(f)``,
    fraction ``f - s`` in float32. Shapes: all (N,) or 0-dim; returns int64 (N,), float32 (N,).
    """
    scale = 1.0 / (n_out.double() / n_in.double())
    f = ((positions.double() + 0.5) * scale - 0.5).float()
    s = torch.floor(f)
    return s.long(), f - s


def _fixed(weight: Tensor) -> Tensor:
    """float32 weight -> OpenCV's ``saturate_cast<short>(w * 2048)`` (round half to even)."""
    return torch.round(weight * _COEF_SCALE).to(torch.int32)


def _opencv_linear_canvas(
    image: Tensor, size_hw: Tensor, offset: Tensor, canvas_hw: tuple[int, int], pad: Tensor
) -> Tensor:
    """OpenCV uint8 ``INTER_LINEAR`` resize to ``size_hw`` placed at ``offset`` on a canvas.

    Args:
        image: (H, W, 3) integer-valued RGB.
        size_hw: (2,) int64 resized (h', w'); offset: (2,) int64 (top, left) on the canvas.
        canvas_hw: fixed (H_in, W_in); pad: (3,) int32 colour of the border.
    Returns:
        (H_in, W_in, 3) int32 in 0-255.
    """
    src = image.to(torch.int32)
    shape_in = _shape_hw(image)
    rows = torch.arange(canvas_hw[0], dtype=torch.int64) - offset[0]  # resized-row of a canvas row
    cols = torch.arange(canvas_hw[1], dtype=torch.int64) - offset[1]
    # columns: OpenCV resets the fraction to 0 where the index leaves the image
    sx, fx = _cv_axis(cols, size_hw[1], shape_in[1])
    low, high = sx < 0, sx >= shape_in[1] - 1
    fx = torch.where(low | high, torch.zeros_like(fx), fx)
    sx = torch.minimum(torch.clamp(sx, min=0), shape_in[1] - 1)
    sx1 = torch.minimum(sx + 1, shape_in[1] - 1)
    a0, a1 = _fixed(1.0 - fx), _fixed(fx)
    # rows: the fraction is kept, the two row indices are clamped
    sy, fy = _cv_axis(rows, size_hw[0], shape_in[0])
    sy0 = torch.clamp(torch.minimum(sy, shape_in[0] - 1), min=0)
    sy1 = torch.clamp(torch.minimum(sy + 1, shape_in[0] - 1), min=0)
    b0, b1 = _fixed(1.0 - fy), _fixed(fy)
    horizontal = a0[None, :, None] * torch.index_select(src, 1, sx) + a1[
        None, :, None
    ] * torch.index_select(src, 1, sx1)  # (H, W_in, 3), weights x 2048
    s0 = torch.div(torch.index_select(horizontal, 0, sy0), 16, rounding_mode="trunc")
    s1 = torch.div(torch.index_select(horizontal, 0, sy1), 16, rounding_mode="trunc")
    v0 = torch.div(b0[:, None, None] * s0, 65536, rounding_mode="trunc")
    v1 = torch.div(b1[:, None, None] * s1, 65536, rounding_mode="trunc")
    out = torch.clamp(torch.div(v0 + v1 + 2, 4, rounding_mode="trunc"), 0, 255)
    inside_y = (rows >= 0) & (rows < size_hw[0])
    inside_x = (cols >= 0) & (cols < size_hw[1])
    inside = inside_y[:, None, None] & inside_x[None, :, None]
    return torch.where(inside, out, pad.view(1, 1, 3))


def _torch_axis(n_out: int | Tensor, n_src: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``F.interpolate(bilinear, align_corners=False)`` indices and weights along one axis.

    float32 scale ``n_src / n_out`` and source ``max(scale (d + 0.5) - 0.5, 0)``, as torch's CPU
    kernel. Returns (i0, i1) int64 (N,) and (w0, w1) float32 (N,).
    """
    positions = torch.arange(n_out, dtype=torch.int64)
    scale = n_src.float() / torch.tensor(n_out, dtype=torch.float32)
    source = torch.clamp(scale * (positions.float() + 0.5) - 0.5, min=0.0)
    i0 = source.long()  # truncation, source >= 0
    w1 = torch.clamp(source - i0.float(), 0.0, 1.0)
    i1 = torch.minimum(i0 + 1, n_src - 1)
    return i0, i1, 1.0 - w1, w1


def _unpad_resize(maps: Tensor, size_hw: Tensor, offset: Tensor, out_hw: tuple) -> Tensor:
    """Canvas maps (C, H_in, W_in) -> the resized-image window resized to ``out_hw``: (C, H, W).

    ``unpad`` + ``F.interpolate(size=(H, W), mode="bilinear", align_corners=False)`` in float32,
    computed with gathers (height outer, as torch's kernel accumulates).
    """
    y0, y1, wy0, wy1 = _torch_axis(out_hw[0], size_hw[0])
    x0, x1, wx0, wx1 = _torch_axis(out_hw[1], size_hw[1])
    y0, y1 = y0 + offset[0], y1 + offset[0]
    x0, x1 = x0 + offset[1], x1 + offset[1]
    top = torch.index_select(maps, 1, y0)
    bottom = torch.index_select(maps, 1, y1)
    t = torch.index_select(top, 2, x0) * wx0 + torch.index_select(top, 2, x1) * wx1
    b = torch.index_select(bottom, 2, x0) * wx0 + torch.index_select(bottom, 2, x1) * wx1
    return t * wy0[:, None] + b * wy1[:, None]


class PredictionGraph(nn.Module):
    """``predict`` as one module: ``(image, camera) -> metric outputs`` (module docstring).

    ``forward(image, camera)``: image (H, W, 3) uint8 or float32 RGB; camera (1,) focal_px or
    (4,) intrinsics per ``camera_input``. Returns a tuple: depth (H, W) metres, then
    confidence (H, W) and normal (H, W, 3) where the spec lists them.
    """

    def __init__(self, model: DepthModel, camera_input: str = "focal") -> None:
        super().__init__()
        spec = model.spec
        if spec.space.resize != "fit":
            raise ValueError(
                f"{spec.name}: export supports models whose canonical space resizes to fit a "
                f"fixed canvas (resize 'fit'), not {spec.space.resize!r}"
            )
        if camera_input not in CAMERA_INPUTS:
            raise ValueError(f"camera input must be one of {', '.join(CAMERA_INPUTS)}")
        self.spec = spec
        self.net = model.net
        self.camera_input = camera_input
        space = spec.space
        self.register_buffer("mean", _channels(space.mean_rgb))
        self.register_buffer("std", _channels(space.std_rgb))
        self.register_buffer("pad", torch.tensor(space.pad_rgb, dtype=torch.int32))

    @property
    def output_names(self) -> list[str]:
        kinds = [k for k in ("confidence", "normal") if k in self.spec.outputs]
        return ["depth", *kinds, "canonical"]

    def focal(self, camera: Tensor) -> Tensor:
        """(1,) focal_px, or (4,) intrinsics under the spec's focal mode -> 0-dim float64."""
        camera = camera.double()
        if self.camera_input == "focal":
            return camera[0]
        return focal_of(camera[0], camera[1], self.spec.focal_mode)

    def forward(self, image: Tensor, camera: Tensor) -> tuple[Tensor, ...]:
        space = self.spec.space
        if image.dtype != torch.uint8:
            image = torch.clamp(torch.round(image), 0, 255)
        hw = _shape_hw(image).double()  # (H, W), dynamic
        # the record: inference_record's arithmetic (canonical.fit_geometry), on tensors
        scale, size, offset = fit_geometry((hw[0], hw[1]), space)
        size_hw, offset = torch.stack(size), torch.stack(offset)
        scale_m = metric_scale(self.focal(camera), scale, space.focal_px, space.variant)
        canvas = _opencv_linear_canvas(image, size_hw, offset, space.input_hw, self.pad)
        x = (canvas.permute(2, 0, 1).float() - self.mean) / self.std
        out = self.net(x[None])
        out_hw = (image.shape[0], image.shape[1])
        depth = _unpad_resize(out["depth_c"][0].float(), size_hw, offset, out_hw)[0]
        depth = depth * scale_m.float()
        if self.spec.max_depth_m is not None:
            depth = torch.clamp(depth, 0.0, float(self.spec.max_depth_m))
        results = [depth]
        if "confidence" in self.spec.outputs:
            conf = out["confidence"][0].float()
            results.append(_unpad_resize(conf, size_hw, offset, out_hw)[0])
        if "normal" in self.spec.outputs:
            normal = _unpad_resize(out["normal"][0, :3].float(), size_hw, offset, out_hw)
            normal = normal / torch.clamp(torch.linalg.vector_norm(normal, dim=0), min=1e-12)
            results.append(normal.permute(1, 2, 0))
        record = torch.cat([scale[None], size_hw.double(), offset.double(), scale_m[None]])
        return (*results, record)  # record: the numbers of canonical.GRAPH_RECORD


def _channels(values: tuple[float, float, float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).view(3, 1, 1)


def _example_inputs(graph: PredictionGraph, image_dtype: str) -> tuple[Tensor, Tensor]:
    h, w = graph.spec.space.input_hw
    size = (max(8, h * 3 // 4 + 5), max(8, w * 2 // 3 + 3))  # not the canvas: a real resize
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (*size, 3), generator=generator, dtype=torch.uint8)
    if image_dtype == "float32":
        image = image.float()
    n = 1 if graph.camera_input == "focal" else 4
    camera = torch.tensor([500.0, 500.0, size[1] / 2, size[0] / 2][:n], dtype=torch.float32)
    return image, camera


def export_onnx(
    model: DepthModel,
    path: str | Path,
    *,
    camera_input: str = "focal",
    image_dtype: str = "uint8",
) -> Path:
    """Write ``model``'s whole prediction as an ONNX graph to ``path`` (atomically).

    Args:
        model: a loaded ``DepthModel`` (any device; exported from a CPU copy).
        path: the ``.onnx`` file.
        camera_input: ``"focal"`` (input ``focal_px`` (1,)) or ``"intrinsics"`` (input
            ``intrinsics`` (4,) fx, fy, cx, cy).
        image_dtype: ``"uint8"`` or ``"float32"`` (0-255 RGB) for the ``image`` input.
    Returns:
        ``path``.
    """
    import onnx

    from metricdepth import __version__

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"--out must be an .onnx file, got {path.name}")
    if image_dtype not in IMAGE_DTYPES:
        raise ValueError(f"image dtype must be one of {', '.join(IMAGE_DTYPES)}")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{path.parent} is not a folder")
    if model.device.type != "cpu" or model.training:  # leave the caller's model as it is
        model = copy.deepcopy(model).to("cpu").eval()
    graph = PredictionGraph(model, camera_input).eval()
    camera_name = "focal_px" if camera_input == "focal" else "intrinsics"
    example = _example_inputs(graph, image_dtype)
    with (
        _quiet_exporter(),
        _fixed_position_embeddings(model),
        torch.inference_mode(False),
        torch.no_grad(),
    ):
        program = torch.onnx.export(
            graph,
            example,
            input_names=["image", camera_name],
            output_names=graph.output_names,
            dynamic_shapes={
                "image": {
                    0: torch.export.Dim("height", min=2),
                    1: torch.export.Dim("width", min=2),
                },
                "camera": None,
            },
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    meta = describe_export(model.spec, camera_input, image_dtype, __version__)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"metricdepth {__version__}: {model.spec.name}, image + camera -> metres"
    with atomic_write(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def describe_export(spec: ModelSpec, camera_input: str, image_dtype: str, version: str) -> dict:
    """The ``metadata_props`` of an exported file (all values are strings)."""
    return {
        META_FORMAT: FORMAT,
        META_SPEC: spec.to_json(),
        "metricdepth.version": version,
        "metricdepth.model": spec.name,
        "metricdepth.canonical_focal_px": repr(float(spec.space.focal_px)),
        "metricdepth.input_hw": json.dumps(list(spec.space.input_hw)),
        "metricdepth.focal_mode": spec.focal_mode,
        "metricdepth.camera_input": camera_input,
        "metricdepth.image_dtype": image_dtype,
        "metricdepth.max_depth_m": json.dumps(spec.max_depth_m),
        "metricdepth.outputs": json.dumps(["depth", *spec.outputs]),
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines and warnings (torchvision absent, deprecations)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


@contextlib.contextmanager
def _fixed_position_embeddings(model: DepthModel) -> Iterator[None]:
    """Every ViT encoder of ``model`` with its position embedding fixed for the model's canvas
    (``DinoVisionTransformer.fixed_grid``): a constant in the graph, not a Resize."""
    from metricdepth.models.vit import DinoVisionTransformer

    height, width = model.spec.space.input_hw
    with contextlib.ExitStack() as stack:
        for module in model.net.modules():
            if isinstance(module, DinoVisionTransformer):
                patch = module.cfg.patch_size
                stack.enter_context(module.fixed_grid(height // patch, width // patch))
        yield
