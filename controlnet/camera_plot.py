"""A camera path drawn as an IMAGE: the top view (x across, z forward, camera headings as ticks) beside the per-frame
curves of pan / tilt / roll, x / y / z and zoom, so users see the path they asked for before sampling.

Drawn with PIL alone, as samplers/sigma_plot.py: ComfyUI ships Pillow, and a plotting library would be a heavy
dependency for two charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .camera_path import CameraPath, euler_angles

BACKGROUND, GRID, AXIS, TEXT = (255, 255, 255), (225, 225, 225), (60, 60, 60), (30, 30, 30)
COLOURS = {"pan": (200, 60, 50), "tilt": (40, 140, 60), "roll": (40, 90, 200),
           "x": (200, 60, 50), "y": (40, 140, 60), "z": (40, 90, 200), "zoom": (130, 70, 170)}
HEADING = (240, 150, 30)
MARK = (170, 170, 170)
PAD = 36


def path_values(path: CameraPath) -> dict[str, np.ndarray]:
    """Per frame, in the keyframes' words: pan, tilt, roll (degrees), x, y (up), z relative to the first camera, and
    zoom as the focal length over the first frame's."""
    first_inverse = np.linalg.inv(path.c2w[0])
    relative = [first_inverse @ pose for pose in path.c2w]
    angles = np.degrees([euler_angles(pose[:3, :3]) for pose in relative])
    position = np.array([pose[:3, 3] for pose in relative])
    return {"pan": angles[:, 1], "tilt": angles[:, 0], "roll": angles[:, 2], "x": position[:, 0],
            "y": -position[:, 1], "z": position[:, 2], "zoom": path.intrinsics[:, 0] / path.intrinsics[0, 0]}


def _span(series: Sequence[np.ndarray]) -> tuple[float, float]:
    low, high = min(float(s.min()) for s in series), max(float(s.max()) for s in series)
    if high - low < 1e-9:
        low, high = low - 1.0, high + 1.0
    margin = (high - low) * 0.08
    return low - margin, high + margin


def _chart(draw: ImageDraw.ImageDraw, box, title: str, curves: dict[str, np.ndarray], marks: Sequence[int],
           font) -> None:
    """Curves over the frame index inside `box` (left, top, right, bottom): a zero line, a legend, the extremes."""
    left, top, right, bottom = box
    frames = len(next(iter(curves.values())))
    low, high = _span(list(curves.values()))

    def x(i: float) -> float:
        return left + (right - left) * i / max(frames - 1, 1)

    def y(v: float) -> float:
        return bottom - (bottom - top) * (v - low) / (high - low)

    draw.rectangle(box, outline=AXIS)
    for frame in marks:
        draw.line([(x(frame), top), (x(frame), bottom)], fill=MARK)
    if low < 0 < high:
        draw.line([(left, y(0)), (right, y(0))], fill=GRID)
    for name, values in curves.items():
        points = [(x(i), y(v)) for i, v in enumerate(values)]
        draw.line(points if len(points) > 1 else points * 2, fill=COLOURS[name], width=2)
    draw.text((left, top - 4), title, fill=TEXT, font=font, anchor="ld")
    legend_x = right
    for name in reversed(list(curves)):
        draw.text((legend_x, top - 4), name, fill=COLOURS[name], font=font, anchor="rd")
        legend_x -= 8 * len(name) + 10
    for value in (max(float(v.max()) for v in curves.values()), min(float(v.min()) for v in curves.values())):
        draw.text((left - 4, y(value)), f"{value:.3g}", fill=TEXT, font=font, anchor="rm")


def _top_view(draw: ImageDraw.ImageDraw, box, values: dict[str, np.ndarray], font) -> None:
    """The path seen from above: x to the right, z (forward) up, a heading tick every few frames."""
    left, top, right, bottom = box
    xs, zs = values["x"], values["z"]
    half = max(float(np.abs(xs).max()), float(np.abs(zs).max()), 0.5) * 1.25
    scale = min(right - left, bottom - top) / (2 * half)
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2

    def point(px: float, pz: float) -> tuple[float, float]:
        return centre_x + px * scale, centre_y - pz * scale

    draw.rectangle(box, outline=AXIS)
    draw.line([(left, centre_y), (right, centre_y)], fill=GRID)
    draw.line([(centre_x, top), (centre_x, bottom)], fill=GRID)
    step = max(1, len(xs) // 12)
    for i in list(range(0, len(xs), step)) + [len(xs) - 1]:
        heading = math.radians(values["pan"][i])
        start = point(xs[i], zs[i])
        draw.line([start, (start[0] + 14 * math.sin(heading), start[1] - 14 * math.cos(heading))], fill=HEADING,
                  width=2)
    path = [point(px, pz) for px, pz in zip(xs, zs)]
    draw.line(path if len(path) > 1 else path * 2, fill=COLOURS["z"], width=2)
    for (px, py), colour in ((path[0], (40, 140, 60)), (path[-1], (200, 60, 50))):
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
    draw.text((left, top - 4), "top view (x right, z forward)", fill=TEXT, font=font, anchor="ld")
    draw.text((right, bottom + 4), f"half width {half:.3g}", fill=TEXT, font=font, anchor="ra")


def plot_camera_path(path: CameraPath, title: str, marks: Sequence[int] = (), width: int = 768,
                     height: int = 432) -> torch.Tensor:
    """IMAGE [1, height, width, 3], float32 0..1; `marks` (keyframe frames) are drawn as grey lines."""
    values = path_values(path)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    draw.text((width / 2, 6), title, fill=TEXT, font=ImageFont.load_default(size=14), anchor="mt")
    side = min(height - 2 * PAD - 8, width // 2 - 2 * PAD)
    _top_view(draw, (PAD, 2 * PAD, PAD + side, 2 * PAD + side), values, font)
    left, right = 2 * PAD + side + 24, width - PAD // 2
    row = (height - 2 * PAD) // 3
    rows = (("degrees", ("pan", "tilt", "roll")), ("position", ("x", "y", "z")), ("zoom", ("zoom",)))
    for k, (label, names) in enumerate(rows):
        top = 2 * PAD + k * row
        _chart(draw, (left, top, right, top + row - 30), label, {n: values[n] for n in names}, marks, font)
    frames = path.frames
    draw.text((left, height - PAD + 10), "frame 0", fill=TEXT, font=font, anchor="la")
    draw.text((right, height - PAD + 10), f"frame {frames - 1}", fill=TEXT, font=font, anchor="ra")
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
