"""One registry and one loader: ``load_model(name_or_path)``.

Names resolve to a ``ModelSpec`` (architecture, pre-processing, output range). Weights come
from a file the user gives (official ``.pth`` or our ``.safetensors``), from the package
(the bundled default), or, where network access and ``huggingface_hub`` exist, from the
Hugging Face cache. Every load is strict: missing, unexpected or mis-shaped tensors are a
ValueError naming the architecture and the first offending keys.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metricdepth.canonical import CanonicalRecord, CanonicalSpace, check_space, fits_space
from metricdepth.io import atomic_write
from metricdepth.models.spec import DEFAULT_MODEL, OFFICIAL_USE, ModelSpec
from metricdepth.models.weights import load_strict, read_torch_checkpoint

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SPEC_METADATA_KEY = "metricdepth_spec"
HF_REPO = "JUGGHM/Metric3D"

_VIT_SPACE = CanonicalSpace(input_hw=(616, 1064))
_CONVNEXT_SPACE = CanonicalSpace(input_hw=(544, 1216))


def _official(name: str, arch: str, size: str, space: CanonicalSpace, outputs, text: str):
    return ModelSpec(
        name=name,
        arch=arch,
        arch_kwargs={"size": size},
        space=space,
        focal_mode="mean",
        max_depth_m=300.0,
        outputs=outputs,
        description=text,
        real_photos=True,
        intended_use=OFFICIAL_USE,
    )


#: Registered names -> (spec, official checkpoint file name in the Hugging Face repo or None).
MODELS: dict[str, tuple[ModelSpec, str | None]] = {
    "metric3d-vit-small": (
        _official("metric3d-vit-small", "metric3d_vit", "small", _VIT_SPACE,
                  ("confidence", "normal"), "Metric3D v2 ViT-S/14 + RAFT decoder, depth + normals"),
        "metric_depth_vit_small_800k.pth",
    ),
    "metric3d-vit-large": (
        _official("metric3d-vit-large", "metric3d_vit", "large", _VIT_SPACE,
                  ("confidence", "normal"), "Metric3D v2 ViT-L/14 + RAFT decoder, depth + normals"),
        "metric_depth_vit_large_800k.pth",
    ),
    "metric3d-vit-giant2": (
        _official("metric3d-vit-giant2", "metric3d_vit", "giant2", _VIT_SPACE,
                  ("confidence", "normal"), "Metric3D v2 ViT-g/14 + RAFT decoder, depth + normals"),
        "metric_depth_vit_giant2_800k.pth",
    ),
    "metric3d-convnext-tiny": (
        _official("metric3d-convnext-tiny", "metric3d_convnext", "tiny", _CONVNEXT_SPACE,
                  ("confidence",), "Metric3D v1 ConvNeXt-T + hourglass decoder (outdoor)"),
        "convtiny_hourglass_v1.pth",
    ),
    "metric3d-convnext-large": (
        _official("metric3d-convnext-large", "metric3d_convnext", "large", _CONVNEXT_SPACE,
                  ("confidence",), "Metric3D v1 ConvNeXt-L + hourglass decoder"),
        "convlarge_hourglass_0.3_150_step750k_v1.1.pth",
    ),
}  # fmt: skip


def _build_vit(size: str) -> nn.Module:
    from metricdepth.models.metric3d_vit import build_metric3d_vit

    return build_metric3d_vit(size)


def _build_convnext(size: str) -> nn.Module:
    from metricdepth.models.metric3d_convnext import build_metric3d_convnext

    return build_metric3d_convnext(size)


def _build_small(**kwargs: Any) -> nn.Module:
    from metricdepth.models.small import build_small_unet

    return build_small_unet(**kwargs)


#: Architecture key -> builder(**arch_kwargs) returning a module whose forward(x) gives a dict
#: with ``depth_c`` (B,1,H,W) and optionally ``confidence`` and ``normal``.
def _load_vit(net: nn.Module, state: Mapping[str, Any]) -> None:
    from metricdepth.models.metric3d_vit import load_official_state_dict

    load_official_state_dict(net, state)


def _load_convnext(net: nn.Module, state: Mapping[str, Any]) -> None:
    from metricdepth.models.metric3d_convnext import load_official_state_dict

    load_official_state_dict(net, state)


#: Official architectures -> strict loader of the official key layout.
OFFICIAL_LOADERS: dict[str, Callable[[nn.Module, Mapping[str, Any]], None]] = {
    "metric3d_vit": _load_vit,
    "metric3d_convnext": _load_convnext,
}

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "metric3d_vit": _build_vit,
    "metric3d_convnext": _build_convnext,
    "small_unet": _build_small,
}


class DepthModel(nn.Module):
    """A network together with its spec: ``forward(x, record=None)`` returns the network's dict.

    ``x`` is a canvas of the model's own canonical space (``prepare_input(rgb, camera,
    model)``); the dict holds ``"depth_c"`` (B, 1, H_in, W_in) and, where the model has them
    (``spec.outputs``), ``"confidence"`` and ``"normal"``. Given the ``record`` of ``x``, a
    record made for another canonical space is refused (ValueError); without it, a canvas
    size this model's space never makes draws a ``UserWarning``.

    ``weights_file``: the file its weights were loaded from (None for a model built in
    memory); ``weights_sha256`` is that file's SHA-256, computed once when first asked for.
    """

    #: What ``infer`` takes (``metricdepth.predictor.Backend``): normalised canvases ``x``.
    takes = ("x",)

    def __init__(self, spec: ModelSpec, net: nn.Module, weights_file: Path | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.weights_file = weights_file

    def infer(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Canonical outputs of a batch of canvases ``batch["x"]`` (B, 3, H_in, W_in), on the
        model's device, in inference mode (the ``Backend`` method of a ``Predictor``)."""
        x = batch["x"].to(self.device)
        with torch.inference_mode():
            return self(x)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary of the model (its spec)."""
        return describe(self)

    @property
    def weights_sha256(self) -> str | None:
        return cached_weights_sha256(self)

    def forward(self, x: Tensor, record: CanonicalRecord | None = None) -> dict[str, Tensor]:
        self.check_input(x, record)
        return self.net(x)

    def check_input(self, x: Tensor, record: CanonicalRecord | None = None) -> None:
        """Refuse a record of another canonical space; warn on a canvas of a foreign size."""
        hw = tuple(int(v) for v in x.shape[-2:])
        space = self.spec.space
        if record is not None:
            check_space(record, space, self.spec.name)
            if hw != tuple(record.input_hw):
                raise ValueError(
                    f"input is {hw[0]}x{hw[1]} but its record's canvas is "
                    f"{record.input_hw[0]}x{record.input_hw[1]}"
                )
        elif not fits_space(hw, space):
            warnings.warn(
                f"{self.spec.name}: a {hw[0]}x{hw[1]} input is not a canvas of this model's "
                f"canonical space (f_c {space.focal_px:g} px, {space.input_hw[0]}x"
                f"{space.input_hw[1]}): prepare it with prepare_input(rgb, camera, model), or "
                "the metric depth will be wrong",
                UserWarning,
                stacklevel=3,
            )

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB chunks (Python 3.10 has no
    ``hashlib.file_digest``)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_weights_sha256(owner: Any) -> str | None:
    """The SHA-256 of ``owner.weights_file`` (None without one), hashed once per file and kept
    on ``owner``: the ``weights_sha256`` of ``DepthModel`` and ``runtime.OnnxModel``."""
    path = owner.weights_file
    if path is None:
        return None
    cached = owner.__dict__.get("_weights_digest")
    if cached is None or cached[0] != path:
        cached = (path, file_sha256(path))
        owner.__dict__["_weights_digest"] = cached
    return cached[1]


def provenance(model: Any) -> dict[str, Any]:
    """What identifies a loaded model in a record: the metricdepth version, the model's name,
    the SHA-256 of its weights file (None for a model built in memory), its intended use
    and, unless it is meant for real photographs, the warning that says so.

    ``model``: a ``DepthModel`` or any object with a ``spec`` (``runtime.OnnxModel``: the
    hash is that of the ``.onnx`` file).
    """
    from metricdepth import __version__

    spec: ModelSpec = model.spec
    warning = spec.trust_warning()
    return {
        "metricdepth_version": __version__,
        "model": spec.name,
        "weights_sha256": getattr(model, "weights_sha256", None),
        "intended_use": {"real_photos": spec.real_photos, "text": spec.use_line()},
        "warnings": [] if warning is None else [warning],
    }


def check_device(device: torch.device | str | None) -> torch.device | None:
    """``device`` as a ``torch.device`` if this machine has it, else one-line ValueError."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r}: unknown; use cpu, cuda, cuda:1, ...") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: no CUDA device here (torch {torch.__version__}); use cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s)"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r}: no Apple MPS device here; use cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported: use cpu or cuda")
    return dev


def list_models() -> list[str]:
    """Registered model names, the bundled default first."""
    return [DEFAULT_MODEL, *MODELS]


def build_model(spec: ModelSpec) -> DepthModel:
    """A model with uninitialised weights for ``spec`` (eval mode)."""
    if spec.arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown architecture {spec.arch!r}; known: {known}")
    return DepthModel(spec, ARCHITECTURES[spec.arch](**spec.arch_kwargs)).eval()


def save_model(net: nn.Module, spec: ModelSpec, path: str | Path) -> Path:
    """Write ``path`` (.safetensors, spec embedded) and its ``.json`` spec beside it, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model files are .safetensors, got {path.name}")
    build_model(spec)  # the spec must describe a buildable architecture
    # clone: tied tensors (e.g. the ViT decoder's norm3 == downsample.1) are stored once each
    state = {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata={SPEC_METADATA_KEY: spec.to_json()})
    with atomic_write(path.with_suffix(".json")) as tmp:
        tmp.write_text(spec.to_json() + "\n")
    return path


def read_spec(path: str | Path) -> ModelSpec:
    """The spec embedded in a metricdepth ``.safetensors`` file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for bad files
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if SPEC_METADATA_KEY not in metadata:
        raise ValueError(
            f"{path}: no metricdepth spec inside; convert it with 'metricdepth convert'"
        )
    return ModelSpec.from_json(metadata[SPEC_METADATA_KEY])


def _load_safetensors(path: Path, device: torch.device | str | None) -> DepthModel:
    from safetensors.torch import load_file

    spec = read_spec(path)
    model = build_model(spec)
    try:
        state = load_file(str(path))
    except Exception as error:
        raise ValueError(f"{path}: cannot read weights ({error})") from None
    try:
        load_strict(model.net, state, f"{spec.name} ({spec.arch})")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    model.weights_file = Path(path)
    return model.to(device) if device is not None else model


def _guess_official(state: Mapping[str, Any]) -> str:
    """Which registered official model a state dict belongs to (by its tensor shapes)."""
    pos = state.get("depth_model.encoder.pos_embed")
    if pos is not None:
        width = pos.shape[-1]
        by_width = {
            384: "metric3d-vit-small",
            1024: "metric3d-vit-large",
            1536: "metric3d-vit-giant2",
        }
        if width in by_width:
            return by_width[width]
    stem = next((v for k, v in state.items() if "downsample_layers.0.0.weight" in k), None)
    if stem is not None:
        return {96: "metric3d-convnext-tiny", 192: "metric3d-convnext-large"}.get(
            stem.shape[0], "unknown"
        )
    raise ValueError(
        "cannot tell which Metric3D model these weights belong to; name it: --model NAME "
        "--weights FILE (load_model(NAME, weights=FILE) in Python)"
    )


def _load_official(name: str, path: Path, device) -> DepthModel:
    spec = MODELS[name][0]
    state = read_torch_checkpoint(path)
    model = build_model(spec)
    try:
        OFFICIAL_LOADERS[spec.arch](model.net, state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    model.weights_file = Path(path)
    return model.to(device) if device is not None else model


def _hub_file(name: str) -> Path:
    filename = MODELS[name][1]
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ValueError(
            f"{name} needs its checkpoint: pass --weights FILE (weights=FILE in Python; "
            f"{filename} from the Hugging Face repo {HF_REPO}), or install huggingface_hub to "
            "download it"
        ) from None
    try:
        return Path(hf_hub_download(HF_REPO, filename))
    except Exception as error:
        raise ValueError(f"could not get {filename} from {HF_REPO}: {error}") from None


def load_model(
    name_or_path: str | Path | None = None,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
) -> DepthModel:
    """Load a depth model by registered name or from a file, strictly.

    Args:
        name_or_path: a name from ``list_models()`` (default: the bundled
            ``metricdepth-small``), a metricdepth ``.safetensors`` file (spec embedded), a
            directory holding one, or an official Metric3D ``.pth`` (architecture detected).
        weights: for a registered official name, its checkpoint file (``.pth`` or a converted
            ``.safetensors``); without it, the Hugging Face cache is tried.
        device: where to put the model (checked first: ``check_device``).
    """
    device = check_device(device)
    name = DEFAULT_MODEL if name_or_path is None else str(name_or_path)
    if name == DEFAULT_MODEL and weights is None:
        bundled = ASSETS / f"{DEFAULT_MODEL}.safetensors"
        if not bundled.exists():
            raise ValueError(f"the default model is not bundled in this install ({bundled})")
        return _load_safetensors(bundled, device)
    if name in MODELS:
        path = Path(weights) if weights is not None else _hub_file(name)
        if not path.is_file():
            raise ValueError(f"weights file not found: {path}")
        if path.suffix == ".safetensors":
            model = _load_safetensors(path, device)
            if model.spec.arch_kwargs != MODELS[name][0].arch_kwargs:
                raise ValueError(f"{path} holds {model.spec.name}, not {name}")
            return model
        return _load_official(name, path, device)
    if weights is not None:
        raise ValueError("--weights goes with a registered model name; got a path as the model")
    path = _resolve_model_file(name)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, device)
    return _load_official(_official_name(path, read_torch_checkpoint), path, device)


_TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def _resolve_model_file(name: str) -> Path:
    """The model file ``name`` (not a registered name) means: the file itself, or the one
    ``.safetensors`` in a folder; one-line ValueError when there is none or it is of a kind
    no loader reads."""
    path = Path(name)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(
                f"{path}: expected exactly one .safetensors model file, found {len(files)}"
            )
        path = files[0]
    if not path.exists():
        known = ", ".join(list_models())
        raise ValueError(f"no model or file named {name!r}; registered models: {known}")
    if path.suffix != ".safetensors" and path.suffix not in _TORCH_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported model file type {path.suffix!r} (.safetensors or .pth)"
        )
    return path


def _official_name(path: Path, read: Callable[[Path], Mapping[str, Any]]) -> str:
    """Which registered official model the checkpoint at ``path`` holds (``read``: how its
    state dict is read); errors name the file."""
    try:
        return _guess_official(read(path))
    except ValueError as error:
        message = str(error)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from None


def _shapes_only(path: Path) -> Mapping[str, Any]:
    """A checkpoint's state dict memory-mapped (tensor shapes without reading the weights);
    a file torch cannot map (the legacy format) is read as ``load_model`` reads it."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read_torch_checkpoint says what is wrong, in one line
        return read_torch_checkpoint(path)
    if isinstance(data, Mapping) and isinstance(data.get("model_state_dict"), Mapping):
        data = data["model_state_dict"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    return data


def model_spec(name_or_path: str | Path | None = None) -> ModelSpec:
    """The spec of the model ``load_model(name_or_path)`` would load, without its weights.

    Registered names need no checkpoint; a ``.safetensors`` file (or a folder holding one) is
    read for its embedded spec; an official ``.pth`` is memory-mapped to tell which model it
    holds from its tensor shapes (its weights are not read).
    """
    if name_or_path is None or str(name_or_path) == DEFAULT_MODEL:
        return read_spec(ASSETS / f"{DEFAULT_MODEL}.safetensors")
    if str(name_or_path) in MODELS:
        return MODELS[str(name_or_path)][0]
    path = _resolve_model_file(str(name_or_path))
    if path.suffix == ".safetensors":
        return read_spec(path)
    return MODELS[_official_name(path, _shapes_only)][0]


def convert_official(checkpoint: str | Path, out: str | Path, name: str | None = None) -> Path:
    """Official ``.pth`` -> our self-describing ``.safetensors`` (+ ``.json`` spec)."""
    checkpoint = Path(checkpoint)
    state = read_torch_checkpoint(checkpoint)
    name = name or _guess_official(state)
    if name not in MODELS:
        raise ValueError(f"unknown official model {name!r}; known: {', '.join(MODELS)}")
    model = _load_official(name, checkpoint, None)
    return save_model(model.net, replace(model.spec), out)


def describe(model: DepthModel) -> dict[str, Any]:
    """A JSON-ready summary of a loaded model (for outputs and ``--help`` listings)."""
    return json.loads(model.spec.to_json())
