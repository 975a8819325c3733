"""What a batch command runs on: image files, folders and annotation files, expanded to items.

A folder is scanned for photos: metricdepth's own outputs (``OUTPUT_SUFFIXES``: depth PNGs,
pictures, canvases) and single-channel 16/32-bit or float images (depth maps lying beside the
photos) are skipped and reported, never predicted on. A file named explicitly is always taken.

Each item has an output stem: the file stem for a single image, the path relative to the
folder for a folder (sub-folders kept), and the annotation ``key`` (the rgb path relative to
the JSON's folder, extension dropped) for an annotation file.

Shards split one item list between n processes or machines without overlap: shard ``i`` of
``n`` (0-based) holds items ``i, i + n, i + 2n, ...`` of the list (round robin, so every shard
gets a similar mix of folders and sizes). The split depends only on the list, so every process
given the same inputs computes the same shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from metricdepth.data.annotations import read_annotations

T = TypeVar("T")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Image files metricdepth writes (``predict --save png16,vis``, ``canonical --out``, the web
#: page's downloads): never inputs of a folder scan.
OUTPUT_SUFFIXES = (
    ".depth.png",
    ".vis.png",
    ".canonical.png",
    ".depth_vis.png",
    ".normal.png",
    ".confidence.png",
)
#: Pillow modes of single-channel 16-bit, 32-bit integer and float images: depth maps, not photos.
DEPTH_MAP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def skip_reason(path: Path) -> str | None:
    """Why a file found in a folder is not a photo to predict on, or None if it is one."""
    if path.name.lower().endswith(OUTPUT_SUFFIXES):
        return "a metricdepth output"
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # a huge header is refused when the file is read
            warnings.simplefilter("ignore")
            with Image.open(path) as image:  # reads the header only
                mode = image.mode
    except Exception:  # an unreadable file is reported when it is read, as any bad image
        return None
    if mode in DEPTH_MAP_MODES:
        return f"a single-channel {mode} image (a depth map, not a photo)"
    return None


@dataclass(frozen=True)
class InputItem:
    """One image to process.

    Attributes:
        image: path of the image file.
        stem: output name relative to the output folder, without extension.
        intrinsics: ``(fx, fy, cx, cy)`` from an annotation file, or None.
        depth: ground-truth depth file from an annotation file, or None.
        depth_scale: its stored units per metre, or None.
    """

    image: Path
    stem: str
    intrinsics: tuple[float, float, float, float] | None = None
    depth: Path | None = None
    depth_scale: float | None = None


def collect_inputs(
    paths: list[Path], skipped: list[tuple[Path, str]] | None = None
) -> list[InputItem]:
    """Expand files, folders and annotation JSONs; duplicate output stems are a ValueError.

    Files of a folder that are not photos (``skip_reason``) are left out and, when ``skipped``
    is a list, appended to it as ``(path, reason)``.
    """
    items: list[InputItem] = []
    for path in map(Path, paths):
        if path.is_dir():
            found, left_out = [], []
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
                reason = skip_reason(file)
                if reason is None:
                    found.append(file)
                else:
                    left_out.append((file, reason))
            if skipped is not None:
                skipped += left_out
            if not found:
                also = f" ({len(left_out)} depth maps or metricdepth outputs)" if left_out else ""
                raise ValueError(
                    f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder{also}"
                )
            items += [InputItem(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
        elif path.suffix.lower() == ".json":
            for entry in read_annotations(path):
                items.append(
                    InputItem(
                        entry.rgb, entry.key, entry.intrinsics, entry.depth, entry.depth_scale
                    )
                )
        elif path.is_file():
            items.append(InputItem(path, path.stem))
        else:
            raise ValueError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for item in items:
        if item.stem in seen:
            raise ValueError(
                f"{item.image} and {seen[item.stem]} would both be written as {item.stem!r}"
            )
        seen[item.stem] = item.image
    return items


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(i, n)`` as ints if ``0 <= i < n``, else a ValueError."""
    try:
        index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got ({index}, {count})")
    return index, count


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: shard 2 of 4, 0-based; anything else is a ValueError."""
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(
            f"--shard must be I/N with 0 <= I < N (0-based shard I of N), e.g. 0/4, got {text!r}"
        )
    index, count = int(parts[0]), int(parts[1])
    if not 0 <= index < count:
        raise ValueError(
            f"--shard must be I/N with 0 <= I < N (0-based shard I of N), e.g. 0/4, got {text!r}"
        )
    return index, count


def shard_items(items: Sequence[T], index: int, count: int) -> list[T]:
    """Shard ``index`` of ``count``: items ``index, index + count, ...`` (0-based)."""
    index, count = check_shard((index, count))
    return list(items[index::count])
