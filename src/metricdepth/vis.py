"""The picture of a prediction (``S.vis.png``): photo and colour-mapped depth side by side, a
colour bar in metres with near and far labelled, and the model's warning when it has one.

Depth is shown as inverse depth through OpenCV's turbo map (near warm, far cold), linear in
1/m between the 2nd and 98th percentile of the valid inverse depth. Text is drawn with Pillow's
default font at a size that follows the image height (``VisLayout.font_px``), so it stays
legible from a 96-pixel thumbnail to a 1080p frame.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Text size in pixels per pixel of image height (at least ``MIN_FONT_PX``): a 375-pixel-tall
#: KITTI frame gets a 21 px font, whose capitals and digits are 15 px tall.
FONT_PER_HEIGHT = 1 / 18
MIN_FONT_PX = 12
#: Colours of the bands (RGB).
BAND_RGB = (32, 32, 32)
TEXT_RGB = (255, 255, 255)
WARNING_BAND_RGB = (255, 196, 0)
WARNING_TEXT_RGB = (0, 0, 0)


def inverse_depth_range(depth_m: np.ndarray) -> tuple[float, float]:
    """``(low, high)`` in 1/m: the 2nd and 98th percentile of valid inverse depth.

    ``colorize_depth`` maps ``low`` (far, ``1 / low`` metres) to the cold end of the colour map
    and ``high`` (near) to the warm end; ``(0, 1)`` when no pixel is valid.
    """
    valid = depth_m > 0
    if not valid.any():
        return 0.0, 1.0
    low, high = np.percentile(1.0 / depth_m[valid].astype(np.float32), [2, 98])
    return float(low), float(high)


def turbo_lut() -> np.ndarray:
    """(256, 3) RGB uint8: OpenCV's turbo map, index 0 cold (far) to 255 warm (near)."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)[:, 0, ::-1].copy()


def colorize_depth(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) RGB uint8: inverse depth through OpenCV's turbo map.

    Near is warm, far is cold; the range is ``inverse_depth_range`` (the 2nd-98th percentile of
    valid inverse depth), linear in 1/m; invalid pixels are black.
    """
    valid = depth_m > 0
    inverse = np.zeros_like(depth_m, dtype=np.float32)
    inverse[valid] = 1.0 / depth_m[valid]
    low, high = inverse_depth_range(depth_m)
    scaled = np.clip((inverse - low) / max(high - low, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    bgr[~valid] = 0
    return bgr[:, :, ::-1].copy()


@dataclass(frozen=True)
class VisLayout:
    """Where everything goes on the picture of an (H, W) image; boxes are ``(y0, y1, x0, x1)``
    (end exclusive) on the whole canvas.

    Attributes:
        font_px: text size in pixels.
        photo, depth: the photo and its colour-mapped depth, side by side.
        bar: the colour bar under the depth (far at the left, near at the right).
        labels: the row of text under the bar (far, middle and near distances in metres).
        caption: the text under the photo (what the colours mean).
        warning: the band of the warning (empty when there is none).
        height, width: the canvas size.
    """

    font_px: int
    photo: tuple[int, int, int, int]
    depth: tuple[int, int, int, int]
    bar: tuple[int, int, int, int]
    labels: tuple[int, int, int, int]
    caption: tuple[int, int, int, int]
    warning: tuple[int, int, int, int]
    height: int
    width: int


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a word wider than that gets a line)."""
    if not text:
        return []
    average = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz") / 26)
    lines = textwrap.wrap(text, max(8, int(width / average)))
    while any(font.getlength(line) > width for line in lines) and len(lines) < len(text):
        columns = max(8, int(max(len(line) for line in lines) * 0.9))
        if columns == max(len(line) for line in lines):
            break
        lines = textwrap.wrap(text, columns)
    return lines


def vis_layout(height: int, width: int, warning_lines: int = 0) -> VisLayout:
    """The ``VisLayout`` of the picture of an ``height`` x ``width`` image."""
    font_px = max(MIN_FONT_PX, round(height * FONT_PER_HEIGHT))
    margin = max(4, font_px // 2)
    bar_h = font_px
    top = height + margin
    bar = (top, top + bar_h, width + margin, 2 * width - margin)
    labels = (bar[1] + margin // 2, bar[1] + margin // 2 + round(font_px * 1.3), bar[2], bar[3])
    band_end = labels[1] + margin
    caption = (top, band_end - margin, margin, width - margin)
    line_h = round(font_px * 1.3)
    warning_end = band_end + (warning_lines * line_h + 2 * margin if warning_lines else 0)
    warning = (band_end, warning_end, 0, 2 * width)
    return VisLayout(
        font_px=font_px,
        photo=(0, height, 0, width),
        depth=(0, height, width, 2 * width),
        bar=bar,
        labels=labels,
        caption=caption,
        warning=warning,
        height=warning_end,
        width=2 * width,
    )


def bar_labels(depth_m: np.ndarray) -> tuple[str, str, str]:
    """``(far, middle, near)`` labels of the colour bar, in metres (the middle is the depth
    half-way along the bar: linear in 1/m, not in m)."""
    low, high = inverse_depth_range(depth_m)
    if not (depth_m > 0).any():
        return "no depth", "", ""

    def metres(inverse: float) -> str:
        if inverse <= 0:
            return "inf"
        value = 1.0 / inverse
        return f"{value:.2f} m" if value < 10 else f"{value:.1f} m"

    return f"far {metres(low)}", metres((low + high) / 2), f"near {metres(high)}"


def visualization(
    image: np.ndarray, depth_m: np.ndarray, warnings: Sequence[str] = ()
) -> np.ndarray:
    """(H, W, 3) RGB photo and (H, W) depth -> the picture (``VisLayout``), RGB uint8."""
    from PIL import Image, ImageDraw

    height, width = depth_m.shape
    font_px = max(MIN_FONT_PX, round(height * FONT_PER_HEIGHT))
    font = _font(font_px)
    lines = _wrap(" ".join(f"warning: {w}" for w in warnings), font, 2 * width - font_px)
    layout = vis_layout(height, width, len(lines))
    canvas = np.empty((layout.height, layout.width, 3), np.uint8)
    canvas[:] = BAND_RGB
    canvas[:height, :width] = image
    canvas[:height, width:] = colorize_depth(depth_m)
    y0, y1, x0, x1 = layout.bar
    if x1 > x0:
        index = np.round(np.linspace(0, 255, x1 - x0)).astype(np.intp)
        canvas[y0:y1, x0:x1] = turbo_lut()[index][None]
    w0, w1, _, _ = layout.warning
    canvas[w0:w1] = WARNING_BAND_RGB
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    far, middle, near = bar_labels(depth_m)
    ly = layout.labels[0]
    draw.text((x0, ly), far, fill=TEXT_RGB, font=font, anchor="la")
    draw.text(((x0 + x1) // 2, ly), middle, fill=TEXT_RGB, font=font, anchor="ma")
    draw.text((x1, ly), near, fill=TEXT_RGB, font=font, anchor="ra")
    cy, _, cx, _ = layout.caption
    draw.text((cx, cy), "depth in metres:", fill=TEXT_RGB, font=font)
    draw.text(
        (cx, cy + round(font_px * 1.3)), "linear in 1/depth, 2nd-98th pct", fill=TEXT_RGB, font=font
    )
    margin = max(4, font_px // 2)
    for k, line in enumerate(lines):
        draw.text(
            (margin, w0 + margin + k * round(font_px * 1.3)), line, fill=WARNING_TEXT_RGB, font=font
        )
    return np.asarray(picture)
