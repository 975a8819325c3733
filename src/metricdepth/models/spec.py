"""What a depth model is: architecture, pre-processing (its canonical space) and output range.

A ``ModelSpec`` travels inside every checkpoint metricdepth writes, so a file alone rebuilds
its model (no name lookup, no guessing of the input size or the canonical focal).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from metricdepth.camera import check_focal_mode
from metricdepth.canonical import CanonicalSpace

SPEC_FORMAT = "metricdepth-spec/1"
#: The bundled model's name (``models.registry`` loads it by default; a trained model may not
#: take it unless its config rebuilds the bundled model).
DEFAULT_MODEL = "metricdepth-small"

#: The command a warning names for real photographs (an official Metric3D model).
REAL_PHOTOS_COMMAND = (
    "metricdepth predict photo.jpg --model metric3d-vit-small "
    "--weights metric_depth_vit_small_800k.pth"
)
#: Intended use of the bundled model (its spec states it; files written before specs carried
#: an intended use get it from ``_stated_before``).
SYNTHETIC_ONLY = "synthetic scenes only, not for real photographs"
OFFICIAL_USE = (
    "real photographs (Metric3D's published weights, trained on real RGB-D and LiDAR data)"
)

#: An exported ``.onnx`` file's metadata_props: its spec (JSON) and format (written by
#: ``metricdepth.export``, read by ``metricdepth.runtime``).
ONNX_META_SPEC = "metricdepth.spec"
ONNX_META_FORMAT = "metricdepth.format"
ONNX_FORMAT = "metricdepth-onnx/1"
#: Numeric precisions a model runs (``runtime.optimize``) or trains in.
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """A depth model's self-description.

    Attributes:
        name: registered name, e.g. ``"metric3d-vit-small"``.
        arch: architecture key in ``metricdepth.models.registry.ARCHITECTURES``.
        arch_kwargs: keyword arguments of the architecture builder (JSON values only).
        space: pre-processing and canonical camera (input size, mean/std, padding, f_c,
            training variant, inference resize).
        focal_mode: default focal of a camera with fx != fy: ``"mean"`` or ``"fx"``.
        max_depth_m: metric outputs are clamped to [0, max_depth_m] (Metric3D's hub: 300);
            None for no clamp.
        outputs: what the network returns besides depth: ``"confidence"``, ``"normal"``.
        description: one line for ``list_models``.
        assumed_focal_px: set when the model was trained on one camera of unknown
            intrinsics: the focal (pixels of its training images) assumed for it; ``predict``
            warns when given a camera whose focal differs. Serialised only when set.
        real_photos: whether the model is meant for real photographs: True (the official
            Metric3D weights), False (e.g. the bundled model, trained on synthetic scenes only)
            or None (not stated). Anything but True makes ``trust_warning`` speak.
        intended_use: one line on what the model is for (shown by ``metricdepth models``,
            recorded in every ``S.json``).
    """

    name: str
    arch: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    space: CanonicalSpace = field(default_factory=CanonicalSpace)
    focal_mode: str = "mean"
    max_depth_m: float | None = None
    outputs: tuple[str, ...] = ()
    description: str = ""
    assumed_focal_px: float | None = None
    real_photos: bool | None = None
    intended_use: str = ""

    def __post_init__(self) -> None:
        check_focal_mode(self.focal_mode)
        focal = self.assumed_focal_px
        if focal is not None:
            number = isinstance(focal, (int, float)) and not isinstance(focal, bool)
            if not (number and 0 < focal < math.inf):
                raise ValueError(f"ModelSpec.assumed_focal_px must be > 0, got {focal!r}")
            object.__setattr__(self, "assumed_focal_px", float(focal))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        unknown = set(self.outputs) - {"confidence", "normal"}
        if unknown:
            raise ValueError(f"ModelSpec.outputs: unknown output(s) {sorted(unknown)}")
        if self.real_photos is not None and not isinstance(self.real_photos, bool):
            raise ValueError(
                f"ModelSpec.real_photos must be true, false or null, got {self.real_photos!r}"
            )

    def use_line(self) -> str:
        """What the model is for, in a few words (``intended_use``, else a stated default)."""
        if self.intended_use:
            return self.intended_use
        if self.real_photos:
            return "real photographs"
        return "not for real photographs" if self.real_photos is False else "not stated"

    def trust_warning(self) -> str | None:
        """One line saying that this model's depths of a real photo are not to be trusted, and
        the command for real photos; None for a model meant for real photographs."""
        if self.real_photos:
            return None
        use = self.use_line()
        if self.real_photos is False and "real photo" in use:
            what = f"{self.name}: {use}"
        elif self.real_photos is False:
            what = f"{self.name} is not meant for real photographs ({use})"
        else:
            what = f"{self.name} does not state that it is meant for real photographs"
        return (
            f"{what}; its depths of a photo are not measurements. "
            f"For real photos: {REAL_PHOTOS_COMMAND}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with a format tag."""
        data = asdict(self)
        data["space"] = asdict(self.space)
        if self.assumed_focal_px is None:  # specs without it stay as they were
            del data["assumed_focal_px"]
        data["format"] = SPEC_FORMAT
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of ``to_dict``; a wrong format or unknown field is a ValueError."""
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt != SPEC_FORMAT:
            raise ValueError(f"not a metricdepth model spec (format {fmt!r}, want {SPEC_FORMAT!r})")
        space = dict(data.pop("space", {}))
        for key in ("input_hw", "mean_rgb", "std_rgb", "pad_rgb"):
            if key in space:
                space[key] = tuple(space[key])
        if "real_photos" not in data and "intended_use" not in data:
            data.update(_stated_before(data.get("name"), data.get("arch")))
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model spec has unknown field(s): {sorted(unknown)}")
        try:
            return cls(space=CanonicalSpace(**space), **data)
        except TypeError as error:
            raise ValueError(f"invalid model spec: {error}") from None

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"model spec is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("model spec must be a JSON object")
        return cls.from_dict(data)


def _stated_before(name: Any, arch: Any) -> dict[str, Any]:
    """The intended use of a spec written before specs carried one (known models only)."""
    if name == "metricdepth-small" and arch == "small_unet":
        return {"real_photos": False, "intended_use": SYNTHETIC_ONLY}
    if (
        isinstance(name, str)
        and name.startswith("metric3d-")
        and arch
        in (
            "metric3d_vit",
            "metric3d_convnext",
        )
    ):
        return {"real_photos": True, "intended_use": OFFICIAL_USE}
    return {}
