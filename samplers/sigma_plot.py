"""A noise schedule drawn as a line chart, as an IMAGE a preview node can show.

Drawn with PIL alone: ComfyUI ships Pillow, and a plotting library would be a heavy dependency for one chart.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
GRID = (225, 225, 225)
AXIS = (60, 60, 60)
TEXT = (30, 30, 30)
CURVE = (31, 100, 200)
# Room around the plot area for the title, the sigma labels (left) and the step labels (below).
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 48, 16, 30, 40
SIGMA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_STEP_LABELS = 12


class _Frame:
    """Maps (step index, sigma 0..1) to pixels of the plot area."""

    def __init__(self, width: int, height: int, points: int):
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM
        self.last = max(points - 1, 1)

    def x(self, index: float) -> float:
        return self.left + (self.right - self.left) * index / self.last

    def y(self, sigma: float) -> float:
        return self.bottom - (self.bottom - self.top) * sigma


def _draw_sigma_grid(draw: ImageDraw.ImageDraw, frame: _Frame, font) -> None:
    for sigma in SIGMA_GRID:
        y = frame.y(sigma)
        draw.line([(frame.left, y), (frame.right, y)], fill=GRID)
        draw.text((frame.left - 6, y), f"{sigma:.2f}", fill=TEXT, font=font, anchor="rm")


def _step_label_stride(points: int) -> int:
    return max(1, math.ceil((points - 1) / MAX_STEP_LABELS))


def _draw_step_axis(draw: ImageDraw.ImageDraw, frame: _Frame, points: int, font) -> None:
    """A tick at every step boundary; labels on every k-th one and on the last, so long schedules stay readable."""
    stride = _step_label_stride(points)
    for index in range(points):
        x = frame.x(index)
        draw.line([(x, frame.bottom), (x, frame.bottom + 4)], fill=AXIS)
        if index % stride == 0 or index == points - 1:
            draw.text((x, frame.bottom + 6), str(index), fill=TEXT, font=font, anchor="mt")
    draw.line([(frame.left, frame.top), (frame.left, frame.bottom)], fill=AXIS, width=1)
    draw.line([(frame.left, frame.bottom), (frame.right, frame.bottom)], fill=AXIS, width=1)
    draw.text(((frame.left + frame.right) / 2, frame.bottom + 22), "step", fill=TEXT, font=font, anchor="mt")


def _draw_curve(draw: ImageDraw.ImageDraw, frame: _Frame, sigmas: list[float]) -> None:
    points = [(frame.x(i), frame.y(s)) for i, s in enumerate(sigmas)]
    if len(points) > 1:
        draw.line(points, fill=CURVE, width=2)
    radius = 3 if len(points) <= 60 else 1
    for x, y in points:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=CURVE)


def plot_sigmas(sigmas: torch.Tensor, title: str, width: int = 512, height: int = 320) -> torch.Tensor:
    """The schedule as an IMAGE [1, height, width, 3], float32 0..1: sigma (0..1) over the step index."""
    values = [float(s) for s in sigmas.flatten()]
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    frame = _Frame(width, height, len(values))
    font = ImageFont.load_default(size=12)
    _draw_sigma_grid(draw, frame, font)
    _draw_step_axis(draw, frame, len(values), font)
    _draw_curve(draw, frame, values)
    draw.text((width / 2, 8), title, fill=TEXT, font=ImageFont.load_default(size=14), anchor="mt")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
