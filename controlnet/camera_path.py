"""Camera paths for the Wan Fun-Camera models: ComfyUI's native presets, keyframes with easing, RealEstate10K pose
files -> one camera-to-world pose and one set of normalised intrinsics per video frame (`CameraPath`).

Conventions are those of ComfyUI's native `WanCameraEmbedding` (VideoX-Fun's presets): poses are camera-to-world
matrices [R | t] in OpenCV camera axes (x right, y down, z forward), R = Rz(roll) Ry(pan) Rx(tilt); the first frame
is the origin. Keyframes speak in the user's words: pan > 0 turns right, tilt > 0 looks up, roll > 0 turns
clockwise (the native "ClockWise (CW)"), x > 0 moves right, y > 0 moves up (OpenCV's -y), z > 0 moves forward (the
native "Zoom In" is this dolly); zoom scales the focal length (1 = unchanged). Native Pan Right at speed 1 moves
x by 1.5 over the clip, ClockWise turns roll by 60 degrees.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

# ComfyUI's native presets (comfy_extras/nodes_camera_trajectory.py, from VideoX-Fun): angle (tilt, pan, roll) in
# units of 60 degrees and translation in OpenCV axes in units of 1.5, both scaled by i / length * speed at frame i.
PRESET_ANGLE = math.pi / 3
PRESET_TRANSLATION = 1.5
PRESETS = {
    "Static": ((0, 0, 0), (0, 0, 0)),
    "Pan Up": ((0, 0, 0), (0, -1, 0)),
    "Pan Down": ((0, 0, 0), (0, 1, 0)),
    "Pan Left": ((0, 0, 0), (-1, 0, 0)),
    "Pan Right": ((0, 0, 0), (1, 0, 0)),
    "Zoom In": ((0, 0, 0), (0, 0, 2)),
    "Zoom Out": ((0, 0, 0), (0, 0, -2)),
    "Anti Clockwise (ACW)": ((0, 0, -1), (0, 0, 0)),
    "ClockWise (CW)": ((0, 0, 1), (0, 0, 0)),
}

EASINGS: dict[str, Callable[[float], float]] = {
    "linear": lambda u: u,
    "ease-in": lambda u: u * u,
    "ease-out": lambda u: u * (2 - u),
    "ease-in-out": lambda u: u * u * (3 - 2 * u),  # smoothstep
}

# Native defaults: principal point in the middle, focal length half the width / height, for poses shot at 1280x720.
DEFAULT_INTRINSICS = (0.5, 0.5, 0.5, 0.5)
POSE_SOURCE_SIZE = (1280, 720)
_POSE_VALUES = ("pan", "tilt", "roll", "x", "y", "z", "zoom")


@dataclass(frozen=True)
class Keyframe:
    """The camera at one frame; `ease` shapes the way here from the previous keyframe."""

    frame: int
    pan: float = 0.0
    tilt: float = 0.0
    roll: float = 0.0
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    zoom: float = 1.0
    ease: str = field(default="linear")


@dataclass(frozen=True, eq=False)
class CameraPath:
    """Per frame: camera-to-world [n, 4, 4] (float64, relative to any origin) and (fx, fy, cx, cy) [n, 4] as
    fractions of the frame's width and height."""

    c2w: np.ndarray
    intrinsics: np.ndarray

    @property
    def frames(self) -> int:
        return len(self.c2w)


# ------------------------------------------------------------------------------------------------ checks


def check_length(length: int) -> None:
    if not isinstance(length, int) or length < 1 or (length - 1) % 4:
        raise ValueError(f"length must be 4n+1 frames (1, 5, 9, ... 81), got {length}: the camera embedding packs "
                         "the first frame 4 times and every later 4 frames into one latent frame.")


def check_intrinsics(fx: float, fy: float, cx: float, cy: float) -> None:
    for name, value in (("fx", fx), ("fy", fy), ("cx", cx), ("cy", cy)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}.")
    if fx <= 0 or fy <= 0:
        raise ValueError(f"fx and fy (focal length as a fraction of the frame) must be > 0, got {fx}, {fy}.")


def check_keyframes(keyframes: Sequence[Keyframe], length: int) -> None:
    """At least one keyframe, frames inside the video and distinct, finite values, a positive zoom, known easing."""
    if not keyframes:
        raise ValueError("Give at least one camera keyframe (e.g. [{\"frame\": 0}]).")
    seen = set()
    for key in keyframes:
        where = f"Keyframe at frame {key.frame}"
        if not isinstance(key.frame, int) or not 0 <= key.frame < length:
            raise ValueError(f"Keyframe frame {key.frame!r} is outside the video: frames are 0 to {length - 1} "
                             f"(length {length}).")
        if key.frame in seen:
            raise ValueError(f"Two keyframes at frame {key.frame}: give each frame once.")
        seen.add(key.frame)
        for name in _POSE_VALUES:
            value = getattr(key, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: {name} must be a finite number, got {value!r}.")
        if key.zoom <= 0:
            raise ValueError(f"{where}: zoom must be > 0 (1 = unchanged focal length), got {key.zoom}.")
        if key.ease not in EASINGS:
            raise ValueError(f"{where}: ease must be one of {', '.join(EASINGS)}, got {key.ease!r}.")


# ------------------------------------------------------------------------------------------------ poses


def rotation(tilt: float, pan: float, roll: float) -> np.ndarray:
    """Rz(roll) Ry(pan) Rx(tilt), angles in radians, as the native presets compose them."""
    cx, sx, cy, sy, cz, sz = math.cos(tilt), math.sin(tilt), math.cos(pan), math.sin(pan), math.cos(roll), \
        math.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.dot(rz, np.dot(ry, rx))


def euler_angles(r: np.ndarray) -> tuple[float, float, float]:
    """(tilt, pan, roll) in radians of a rotation Rz(roll) Ry(pan) Rx(tilt)."""
    pan = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    return math.atan2(r[2, 1], r[2, 2]), pan, math.atan2(r[1, 0], r[0, 0])


def _pose(r: np.ndarray, t) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = r, t
    return pose


def preset_path(preset: str, length: int, speed: float = 1.0,
                intrinsics: tuple[float, float, float, float] = DEFAULT_INTRINSICS) -> CameraPath:
    """A native preset, computed as ComfyUI's WanCameraEmbedding computes it (including its i / length ramp, which
    stops one step short of speed x the preset's full move)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown camera preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    check_length(length)
    if not math.isfinite(speed) or speed < 0:
        raise ValueError(f"speed must be a finite number >= 0, got {speed}.")
    check_intrinsics(*intrinsics)
    angle, translation = (np.array(v, dtype=np.float64) for v in PRESETS[preset])
    poses = []
    for i in range(length):
        ramp = (i / length) * speed
        poses.append(_pose(rotation(*(ramp * PRESET_ANGLE * angle)), (ramp * PRESET_TRANSLATION * translation)))
    return CameraPath(np.stack(poses), np.tile(np.array(intrinsics, dtype=np.float64), (length, 1)))


def keyframe_values(keyframes: Sequence[Keyframe], length: int) -> dict[str, np.ndarray]:
    """Every pose value at every frame: held before the first and after the last keyframe, eased between."""
    check_length(length)
    check_keyframes(keyframes, length)
    ordered = sorted(keyframes, key=lambda k: k.frame)
    values = {name: np.empty(length) for name in _POSE_VALUES}
    for i in range(length):
        after = next((k for k in ordered if k.frame >= i), ordered[-1])
        before = next((k for k in reversed(ordered) if k.frame <= i), ordered[0])
        span = after.frame - before.frame
        u = EASINGS[after.ease]((i - before.frame) / span) if span else 0.0
        for name in _POSE_VALUES:
            start, end = getattr(before, name), getattr(after, name)
            values[name][i] = start + (end - start) * u
    return values


def keyframe_path(keyframes: Sequence[Keyframe], length: int,
                  intrinsics: tuple[float, float, float, float] = DEFAULT_INTRINSICS) -> CameraPath:
    check_intrinsics(*intrinsics)
    v = keyframe_values(keyframes, length)
    poses = [_pose(rotation(math.radians(v["tilt"][i]), math.radians(v["pan"][i]), math.radians(v["roll"][i])),
                   (v["x"][i], -v["y"][i], v["z"][i])) for i in range(length)]
    fx, fy, cx, cy = intrinsics
    focal = np.stack([v["zoom"] * fx, v["zoom"] * fy, np.full(length, float(cx)), np.full(length, float(cy))], 1)
    return CameraPath(np.stack(poses), focal)


# ------------------------------------------------------------------------------------------------ text inputs


def parse_keyframes(text: str) -> list[Keyframe]:
    """JSON keyframes: a list of objects with "frame" and any of pan, tilt, roll (degrees), x, y, z, zoom, ease.
    A value left out keeps the previous keyframe's (the first keyframe's defaults: 0, zoom 1, linear)."""
    try:
        items = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as error:
        raise ValueError(f"The camera keyframes are not valid JSON ({error.msg} at line {error.lineno}, column "
                         f"{error.colno}); write a list like [{{\"frame\": 0}}, {{\"frame\": 80, \"pan\": 30}}].") \
            from None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError("The camera keyframes must be a JSON list of objects, like "
                         "[{\"frame\": 0}, {\"frame\": 80, \"pan\": 30, \"ease\": \"ease-in-out\"}].")
    names = {f.name for f in fields(Keyframe)}
    keyframes = []
    for item in items:
        unknown = sorted(set(item) - names)
        if unknown:
            raise ValueError(f"Unknown keyframe field(s) {', '.join(unknown)}; a keyframe has {', '.join(names)}.")
        if "frame" not in item:
            raise ValueError(f"Every keyframe needs a \"frame\"; {json.dumps(item)} has none.")
        frame = item["frame"]
        if isinstance(frame, float) and frame.is_integer():
            frame = int(frame)
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise ValueError(f"A keyframe's frame must be a whole number, got {frame!r}.")
        previous = keyframes[-1] if keyframes else Keyframe(frame)
        values = {k: v for k, v in item.items() if k not in ("frame", "ease")}
        keyframes.append(replace(previous, frame=frame, ease=item.get("ease", "linear"), **values))
    return keyframes


def parse_pose_file(text: str) -> CameraPath:
    """A RealEstate10K / CameraCtrl pose file: one line per frame, `timestamp fx fy cx cy 0 0` and a 3x4
    world-to-camera matrix row by row (19 numbers); a first line that is not numbers (the video's URL) is skipped."""
    rows = []
    for number, line in enumerate(text.strip().splitlines(), 1):
        parts = line.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            if number == 1 and not rows:
                continue
            raise ValueError(f"Pose file line {number} holds something that is not a number: {line[:60]!r}.") \
                from None
        if len(values) != 19:
            raise ValueError(f"Pose file line {number} has {len(values)} numbers; each pose line has 19 "
                             "(timestamp fx fy cx cy 0 0 and a 3x4 world-to-camera matrix).")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"Pose file line {number} holds NaN or infinite values.")
        rows.append(values)
    if not rows:
        raise ValueError("The pose file holds no poses: paste the lines of a RealEstate10K / CameraCtrl .txt file.")
    table = np.array(rows, dtype=np.float64)
    w2c = np.tile(np.eye(4), (len(rows), 1, 1))
    w2c[:, :3, :] = table[:, 7:].reshape(-1, 3, 4)
    if np.any(np.abs(np.linalg.det(w2c)) < 1e-12):
        raise ValueError("The pose file holds a world-to-camera matrix that cannot be inverted.")
    for fx, fy in table[:, 1:3]:
        check_intrinsics(fx, fy, 0.0, 0.0)
    return CameraPath(np.linalg.inv(w2c), table[:, 1:5].copy())


def resample_path(path: CameraPath, length: int) -> CameraPath:
    """`length` poses spread evenly over the path's (nearest pose, first and last kept)."""
    check_length(length)
    if path.frames < length:
        raise ValueError(f"The pose file has {path.frames} poses but the video has {length} frames: give at least "
                         f"as many poses as frames, or lower length.")
    index = np.round(np.linspace(0, path.frames - 1, length)).astype(int)
    return CameraPath(path.c2w[index], path.intrinsics[index])
