"""Training data: frame sources, weighted mixing, and the canonical transform per sample.

Sources give ``Frame(image uint8 (H, W, 3), camera, depth_m (H, W) float32, 0 = invalid)``,
optionally with semantic labels (142 = sky) and normals:

- ``AnnotationSource``: any Metric3D-format annotation JSON with depth and ``cam_in``
  (``metricdepth.data.annotations``), or without ``cam_in`` for one camera of unknown
  intrinsics when an ``assumed_focal_px`` is given;
- ``SyntheticSource``: scenes rendered on the fly by ``metricdepth.data.synthetic``
  (scene ``i`` is ``render_scene(scene_seed(seed, i), config)``; sky labelled).

Each source has a ``name`` (in messages; ``synthetic(seed=.., n=..)`` for a synthetic one),
optionally a ``dataset_name`` (the batch's ``dataset``, default ``name``; ``synthetic`` for a
synthetic one) and a Metric3D ``data_type`` (``DATA_TYPES``), both of which the official
losses read to decide which samples they apply to, and a ``sparse`` flag: True scatters the
depth when it is resized (``frame.resize(sparse=True)``: valid-only min-pooling, no point
copied), False resamples it by nearest neighbour, None decides per frame (sparse when fewer
than ``SPARSE_VALID_FRACTION`` of its pixels are valid). Depth is never interpolated.

``CanonicalTrainingSet`` is a map-style ``torch.utils.data.Dataset`` over *global sample
indices*: sample ``g`` is a pure function of ``(seed, g)``. The source is drawn by weight from
``default_rng([seed, 1, g])``; the item is position ``g mod N`` of source ``d``'s permutation for
epoch ``g // N`` (``default_rng([seed, 2, d, epoch])``), so a single source is read without
replacement epoch by epoch; the flip and the canonical record (``canonical.training_record``:
random resize, crop/pad, label scale) use ``default_rng([seed, 3, g])``. A run's data order is
therefore fixed by the seed, the batch size and the number of processes: step ``s`` of rank
``r`` of ``W`` reads ``g = (s * W + r) * B + k`` for ``k < B`` (``step_indices``). Resuming
needs only the step, and ranks read disjoint parts of one stream (like ``DistributedSampler``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from metricdepth import frame as frames
from metricdepth.canonical import CanonicalSpace, normalize, to_canonical, training_record
from metricdepth.frame import SKY_ID, Frame

#: Metric3D's data types (``data_type`` of a dataset); the official losses apply by type.
DATA_TYPES: tuple[str, ...] = (
    "lidar", "denselidar", "denselidar_nometric", "denselidar_syn", "stereo", "sfm",
)  # fmt: skip
#: Data types whose sky pixels that *have* a depth lose their sky label (Metric3D's loader:
#: the sky mask is trusted only where the sensor saw nothing).
SKY_RELABEL_TYPES: tuple[str, ...] = ("lidar", "sfm", "denselidar", "denselidar_nometric")
#: The ``data_type`` of an annotation dataset that does not state one (Metric3D's KITTI and
#: NYU are ``lidar``); a synthetic source is ``denselidar_syn``.
ANNOTATION_DATA_TYPE = "lidar"
#: The ``data_type`` assumed for a ``FrameSource`` of your own that has no such attribute.
SOURCE_DATA_TYPE = "denselidar"
#: ``sparse=None``: a frame with fewer valid depth pixels than this fraction is scattered.
SPARSE_VALID_FRACTION = 0.3


class FrameSource(Protocol):
    """A finite, indexable collection of frames with metric depth.

    Optional attributes read by ``CanonicalTrainingSet`` (defaults in brackets):
    ``dataset_name`` (``name``: the batch's ``dataset``), ``data_type`` (``SOURCE_DATA_TYPE``,
    ``"denselidar"``; the sources here always set it: ``AnnotationSource`` defaults to
    ``ANNOTATION_DATA_TYPE``, ``"lidar"``, a ``SyntheticSource`` is ``"denselidar_syn"``) and
    ``sparse`` (None: decide per frame).
    """

    name: str

    def __len__(self) -> int: ...

    def frame(self, index: int) -> Frame: ...


class AnnotationSource:
    """Frames of a Metric3D-format annotation JSON (every entry needs ``depth``).

    Images are read with ``metricdepth.io.load_image`` (EXIF orientation applied: ``cam_in``
    describes the image as displayed, as in Metric3D), depth with ``read_depth`` and the
    entry's ``depth_scale`` (or ``depth_scale`` given here: the dataset's, for every entry),
    ``sky_mask``/``sem`` and ``normal`` with ``annotations.read_sem``/``read_normal``.

    An entry without ``cam_in`` is refused unless ``assumed_focal_px`` is given: then its
    camera is ``fx = fy = assumed_focal_px`` (pixels of the stored image) with the principal
    point at the image centre, for data from one camera whose intrinsics are unknown (the
    trained model records the assumption; ``predict`` warns for other cameras).
    """

    def __init__(
        self,
        json_path: str | Path,
        root: str | Path | None = None,
        *,
        cache: bool = True,
        depth_scale: float | None = None,
        name: str | None = None,
        data_type: str = ANNOTATION_DATA_TYPE,
        sparse: bool | None = None,
        assumed_focal_px: float | None = None,
    ) -> None:
        from metricdepth.data.annotations import read_annotations

        self.name = name or Path(json_path).resolve().parent.name or str(json_path)
        self.data_type = check_data_type(data_type)
        self.sparse = sparse
        self.assumed_focal_px = assumed_focal_px
        self.entries = read_annotations(json_path, root)
        for entry in self.entries:
            if entry.depth is None:
                raise ValueError(f"{json_path}: entry {entry.key!r} has no 'depth' to train on")
            if entry.intrinsics is None and assumed_focal_px is None:
                raise ValueError(
                    f"{json_path}: entry {entry.key!r} has no 'cam_in'; give its intrinsics, or "
                    "set assumed_focal_px in the dataset config to train on one camera of "
                    "unknown intrinsics (the model records the assumed focal)"
                )
        if not self.entries:
            raise ValueError(f"{json_path}: no entries")
        self.depth_scale = depth_scale
        self._cache: dict[int, Frame] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.entries)

    def frame(self, index: int) -> Frame:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        from metricdepth.cameras import centred_camera
        from metricdepth.data.annotations import camera_for, read_normal, read_sem
        from metricdepth.io import load_image, read_depth

        entry = self.entries[index]
        image, _, _ = load_image(entry.rgb)
        depth_m = read_depth(entry.depth, self.depth_scale or entry.depth_scale)
        sem, normal = read_sem(entry), read_normal(entry)
        height, width = image.shape[:2]
        for path, label in ((entry.depth, depth_m), (entry.sky_mask or entry.sem, sem),
                            (entry.normal, normal)):  # fmt: skip
            if label is not None and label.shape[:2] != (height, width):
                raise ValueError(
                    f"{path}: label is {label.shape[1]}x{label.shape[0]} but the image is "
                    f"{width}x{height}"
                )
        if entry.intrinsics is None:
            camera = centred_camera(float(self.assumed_focal_px), width, height)
        else:
            camera = camera_for(entry, width, height)
        result = Frame(image, camera, depth_m, sem=sem, normal=normal)
        if self._cache is not None:
            self._cache[index] = result
        return result


class SyntheticSource:
    """``num_scenes`` synthetic scenes, rendered on first use (``metricdepth.data.synthetic``)."""

    def __init__(self, seed: int, num_scenes: int, config: Any = None, *, cache: bool = True):
        from metricdepth.data.synthetic import SynthConfig

        if num_scenes < 1:
            raise ValueError(f"SyntheticSource: num_scenes must be >= 1, got {num_scenes}")
        self.name = f"synthetic(seed={seed}, n={num_scenes})"  # tells two sources apart
        self.dataset_name = "synthetic"  # what the losses read (batch["dataset"])
        self.data_type = "denselidar_syn"
        self.sparse = False
        self.seed = int(seed)
        self.num_scenes = int(num_scenes)
        self.config = SynthConfig() if config is None else config
        self._cache: dict[int, Frame] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_scenes

    def frame(self, index: int) -> Frame:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        from metricdepth.data.synthetic import render_scene, scene_seed

        sample = render_scene(scene_seed(self.seed, index), self.config)
        sky = np.where(sample.depth_m > 0, np.int32(0), np.int32(SKY_ID))  # nothing hit: sky
        result = Frame(sample.image, sample.camera, sample.depth_m, sem=sky)
        if self._cache is not None:
            self._cache[index] = result
        return result


def build_source(dataset) -> FrameSource:
    """The source of a ``metricdepth.train.config.DatasetConfig``."""
    name = getattr(dataset, "name", None)
    data_type = getattr(dataset, "data_type", None)
    sparse = getattr(dataset, "sparse", None)
    if dataset.kind == "annotations":
        return AnnotationSource(
            dataset.path, dataset.root, cache=dataset.cache, depth_scale=dataset.depth_scale,
            name=name, data_type=data_type or ANNOTATION_DATA_TYPE, sparse=sparse,
            assumed_focal_px=getattr(dataset, "assumed_focal_px", None),
        )  # fmt: skip
    from metricdepth.data.synthetic import SynthConfig

    source = SyntheticSource(
        dataset.seed, dataset.num_scenes, SynthConfig.from_dict(dataset.synth), cache=dataset.cache
    )
    if name:
        source.name = source.dataset_name = name
    source.data_type = data_type or source.data_type  # the config checked it
    source.sparse = bool(sparse)  # rendered depth is dense unless told otherwise
    return source


def assumed_focal(config) -> float | None:
    """The ``assumed_focal_px`` a model trained on ``config.datasets`` must record, or None.

    Every dataset that sets one sets the same value (one camera of unknown intrinsics; the
    ``TrainConfig`` refuses different ones). The trainer writes it into ``ModelSpec``
    (``assumed_focal_px``), so ``predict`` can warn when given another camera.
    """
    for d in config.datasets:
        if getattr(d, "assumed_focal_px", None) is not None:
            return float(d.assumed_focal_px)
    return None


def check_data_type(data_type: str) -> str:
    """``data_type`` if it is one of ``DATA_TYPES``, else a one-line ValueError (the rule
    the sources and ``train.config`` share)."""
    if data_type not in DATA_TYPES:
        raise ValueError(f"data_type: must be one of {', '.join(DATA_TYPES)}, got {data_type!r}")
    return data_type


def canonical_intrinsic(record) -> np.ndarray:
    """(3, 3) float64 K of the canvas in the record's label space: ``record.camera_c``'s K
    with ``fx`` and ``fy`` multiplied by ``record.label_scale``; principal point in canvas
    pixels (pixel centres at integers).

    This is Metric3D's batch ``intrinsic``: ``fx = f_c`` (``fy = f_c fy / fx``) with
    ``focal_mode: fx``, and ``f_c`` for both when ``fx = fy``, up to the rounding of the
    resized size to whole pixels (``camera_c`` is the exact camera of the realised size; the
    label scale uses the nominal resize, as Metric3D's). Back-projecting canonical depth
    with it, ``K^-1 (u, v, 1) depth_c``, gives the metric X and Y of the point and Z =
    ``depth_c``; so a point projects to the same canvas pixel with ``K`` and its canonical
    depth as with ``camera_c`` and its metric depth (``none`` variant: ``K`` is
    ``camera_c``'s).
    """
    K = record.camera_c.K  # noqa: N806
    K[0, 0] *= record.label_scale
    K[1, 1] *= record.label_scale
    return K


def step_indices(step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> range:
    """Global sample indices of one process's batch at ``step``: ``(step*W + rank)*B + k``."""
    start = (step * world_size + rank) * batch_size
    return range(start, start + batch_size)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields ``step_indices(step, ...)`` for ``step`` in ``[start_step, steps)``."""

    def __init__(
        self, start_step: int, steps: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        self.start_step, self.steps = int(start_step), int(steps)
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            yield list(step_indices(step, self.batch_size, self.rank, self.world_size))


@dataclass(frozen=True)
class Augmentation:
    """The random changes of a training sample (checked on construction).

    Attributes:
        resize_range: ``(low, high)``, ``0 < low <= high``: the resize factor ``t ~ U(low,
            high)`` of ``canonical.training_record`` (1, 1: none).
        resize_prob: probability in [0, 1] of drawing ``t`` (else ``t = 1``).
        crop: ``"rand"`` (a random window where a side exceeds the canvas) or ``"center"``.
        flip_prob: probability in [0, 1] of a left-right flip (image, depth and camera) before
            the record.
        resize_base: ``"none"`` or ``"fit"`` (``t`` times inference's fit factor).
    """

    resize_range: tuple[float, float] = (1.0, 1.0)
    resize_prob: float = 1.0
    crop: str = "rand"
    flip_prob: float = 0.0
    resize_base: str = "none"

    def __post_init__(self) -> None:
        try:
            low, high = (float(v) for v in self.resize_range)
        except (TypeError, ValueError):
            low = high = math.nan
        if not (0 < low <= high < math.inf):
            raise ValueError(f"resize_range must be 0 < low <= high, got {self.resize_range!r}")
        object.__setattr__(self, "resize_range", (low, high))
        for name in ("resize_prob", "flip_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.crop not in ("rand", "center"):
            raise ValueError(f"crop must be 'rand' or 'center', got {self.crop!r}")
        if self.resize_base not in ("none", "fit"):
            raise ValueError(f"resize_base must be 'none' or 'fit', got {self.resize_base!r}")


class CanonicalTrainingSet(torch.utils.data.Dataset):
    """Weighted mixture of sources moved into canonical space, indexed by global sample index.

    ``dataset[g]`` returns a dict of tensors:

    - ``image``: float32 (3, H, W), normalised (``canonical.normalize``) canvas of
      ``space.input_hw``, padding in ``space.pad_rgb``;
    - ``depth_c``: float32 (1, H, W) labels in the variant's canonical space (metres x
      ``label_scale``), 0 where invalid;
    - ``mask``: bool (1, H, W), True on valid labels (not padding, not invalid, metric depth in
      ``[min_depth_m, max_depth_m]``);
    - ``label_scale``, ``f_eff_px``, ``focal_px``: float32 scalars; ``source``: int64 index;
    - ``sem_mask``: int32 (1, H, W), Metric3D's semantic labels: 142 sky, -1 none (padding,
      or no sky mask); sky pixels are never depth labels, and for ``SKY_RELABEL_TYPES`` sky
      pixels that have a depth lose the sky label (Metric3D's loader);
    - ``normal``: float32 (3, H, W) camera-frame unit normals, 0 where there are none;
    - ``pad``: int64 (4,) padding ``(top, bottom, left, right)`` of the canvas;
    - ``intrinsic``: float32 (3, 3) canonical K of the canvas (``canonical_intrinsic``), the
      K the official losses back-project ``depth_c`` with;
    - ``dataset``: the source's ``dataset_name`` (default: its ``name``), ``data_type``: its
      Metric3D data type (strings; the default collation makes lists of them), the names the
      official losses read.

    Args:
        sources: the frame sources; ``weights``: their sampling weights (> 0).
        space: training space: ``focal_px`` (f_c), ``input_hw`` (canvas) and normalisation.
        variant: ``"none"``, ``"label"`` or ``"image"`` (see ``metricdepth.canonical``).
        augmentation: the random resize, crop and flip (``Augmentation``; default: none but
            the random crop).
        focal_mode: ``"mean"`` or ``"fx"``, passed to ``training_record``.
        min_depth_m, max_depth_m: metric depths outside this range are not labels.
        seed: the stream's seed.
    """

    def __init__(
        self,
        sources: Sequence[FrameSource],
        weights: Sequence[float],
        space: CanonicalSpace,
        *,
        variant: str,
        augmentation: Augmentation | None = None,
        focal_mode: str = "mean",
        min_depth_m: float = 0.0,
        max_depth_m: float = math.inf,
        seed: int = 0,
    ) -> None:
        if not sources or len(sources) != len(weights):
            raise ValueError("CanonicalTrainingSet: need one weight per source, at least one")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w) & (w > 0)):
            raise ValueError(f"CanonicalTrainingSet: weights must be > 0, got {list(weights)}")
        self.sources = list(sources)
        self.cumulative = np.cumsum(w / w.sum())
        self.space = space
        self.variant = variant
        augmentation = Augmentation() if augmentation is None else augmentation
        if not isinstance(augmentation, Augmentation):
            raise TypeError(f"augmentation must be an Augmentation, got {augmentation!r}")
        self.augmentation = augmentation
        self.focal_mode = focal_mode
        self.min_depth_m, self.max_depth_m = float(min_depth_m), float(max_depth_m)
        self.seed = int(seed)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        """Samples per "epoch" (the sum of the source sizes); indices beyond it are valid."""
        return sum(len(s) for s in self.sources)

    def locate(self, index: int) -> tuple[int, int]:
        """``(source, item)`` of global sample ``index``."""
        if len(self.sources) == 1:
            source = 0
        else:
            u = np.random.default_rng([self.seed, 1, index]).random()
            source = min(
                int(np.searchsorted(self.cumulative, u, side="right")), len(self.sources) - 1
            )
        n = len(self.sources[source])
        epoch, position = divmod(index, n)
        key = (source, epoch)
        perm = self._perms.get(key)
        if perm is None:
            if len(self._perms) > 4 * len(self.sources):
                self._perms.clear()
            perm = np.random.default_rng([self.seed, 2, source, epoch]).permutation(n)
            self._perms[key] = perm
        return source, int(perm[position])

    def sample(self, index: int) -> tuple[Frame, Any, int]:
        """``(canvas frame, record, source)`` of global sample ``index`` (before normalising)."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        source, item = self.locate(index)
        origin = self.sources[source]
        frame = self.sources[source].frame(item)
        depth = frame.depth
        if depth is None:
            raise ValueError(f"{origin.name}: item {item} has no depth")
        keep = (depth >= self.min_depth_m) & (depth <= self.max_depth_m)
        sem = frame.sem
        if sem is not None and (sky := sem == SKY_ID).any():
            if getattr(origin, "data_type", SOURCE_DATA_TYPE) in SKY_RELABEL_TYPES:
                sem = np.where(sky & frame.mask, np.int32(-1), sem)  # measured: not sky
            keep &= sem != SKY_ID  # sky is never a depth label
        if not keep.all() or sem is not frame.sem:
            frame = frames.with_depth(frame, np.where(keep, depth, np.float32(0)), sem)
        sparse = getattr(origin, "sparse", None)
        if sparse is None:
            sparse = bool(frame.mask.mean() < SPARSE_VALID_FRACTION)
        rng = np.random.default_rng([self.seed, 3, index])
        aug = self.augmentation
        if aug.flip_prob and rng.random() < aug.flip_prob:
            frame = frames.flip(frame)
        record = training_record(
            frame.camera,
            self.space,
            rng,
            variant=self.variant,
            resize_range=aug.resize_range,
            resize_prob=aug.resize_prob,
            crop=aug.crop,
            focal_mode=self.focal_mode,
            resize_base=aug.resize_base,
        )
        canvas = to_canonical(frame, record, pad_rgb=self.space.pad_rgb, sparse=sparse)
        return canvas, record, source

    def __getitem__(self, index: int) -> dict[str, Any]:
        canvas, record, source = self.sample(int(index))
        height, width = self.space.input_hw
        if canvas.sem is None:
            sem = torch.full((1, height, width), -1, dtype=torch.int32)
        else:
            sem = torch.from_numpy(np.ascontiguousarray(canvas.sem))[None]
        if canvas.normal is None:
            normal = torch.zeros((3, height, width), dtype=torch.float32)
        else:
            normal = torch.from_numpy(np.ascontiguousarray(canvas.normal.transpose(2, 0, 1)))
        origin = self.sources[source]
        return {
            "image": normalize(canvas.image, self.space)[0],
            "depth_c": torch.from_numpy(np.ascontiguousarray(canvas.depth))[None],
            "mask": torch.from_numpy(np.ascontiguousarray(canvas.mask))[None],
            "label_scale": torch.tensor(record.label_scale, dtype=torch.float32),
            "f_eff_px": torch.tensor(record.f_eff_px, dtype=torch.float32),
            "focal_px": torch.tensor(record.focal_px, dtype=torch.float32),
            "source": torch.tensor(source, dtype=torch.int64),
            "sem_mask": sem,
            "normal": normal,
            "pad": torch.tensor(record.pad, dtype=torch.int64),
            "intrinsic": torch.from_numpy(canonical_intrinsic(record).astype(np.float32)),
            "dataset": getattr(origin, "dataset_name", origin.name),
            "data_type": getattr(origin, "data_type", SOURCE_DATA_TYPE),
        }
