"""Camera paths for Wan Fun-Camera: the native presets by ComfyUI's formulas, keyframes that reduce exactly to each
preset, easing, JSON and chained keyframes, RealEstate10K pose files, the Plücker embedding's values and layout,
the plot, and the errors bad input gets. (The embedding equals native WanCameraEmbedding's bit for bit:
integration/test_comfyui_wan_camera.py.)"""

import json
import math

import numpy as np
import pytest
import torch

import sana_wan
from sana_wan.controlnet.camera_embedding import camera_embedding, check_camera_embedding
from sana_wan.controlnet.camera_path import (
    PRESETS, Keyframe, keyframe_path, keyframe_values, parse_keyframes, parse_pose_file, preset_path, resample_path,
)

NODES = sana_wan.NODE_CLASS_MAPPINGS
WIDTH, HEIGHT = 48, 32


def _native_preset_pose(angle, translation, i, n, speed):
    """comfy_extras/nodes_camera_trajectory.py get_camera_motion: angle = i/n * speed * pi/3 * a, R = Rz Ry Rx,
    T = i/n * speed * 1.5 * t."""
    tx, ty, tz = (i / n * speed * math.pi / 3 * a for a in angle)
    rx = np.array([[1, 0, 0], [0, math.cos(tx), -math.sin(tx)], [0, math.sin(tx), math.cos(tx)]])
    ry = np.array([[math.cos(ty), 0, math.sin(ty)], [0, 1, 0], [-math.sin(ty), 0, math.cos(ty)]])
    rz = np.array([[math.cos(tz), -math.sin(tz), 0], [math.sin(tz), math.cos(tz), 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = rz @ ry @ rx
    pose[:3, 3] = [i / n * speed * 1.5 * t for t in translation]
    return pose


def _preset_as_keyframes(preset: str, length: int, speed: float) -> list[Keyframe]:
    """The preset's last frame in keyframe words (degrees, y up), from ComfyUI's table; frame 0 at rest."""
    (tilt, pan, roll), (x, y, z) = PRESETS[preset]
    ramp = (length - 1) / length * speed
    return [Keyframe(0), Keyframe(length - 1, pan=ramp * 60 * pan, tilt=ramp * 60 * tilt, roll=ramp * 60 * roll,
                                  x=ramp * 1.5 * x, y=-ramp * 1.5 * y, z=ramp * 1.5 * z)]


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("length,speed", [(81, 1.0), (9, 2.5)])
def test_preset_poses_follow_comfyui_formulas(preset, length, speed):
    path = preset_path(preset, length, speed)
    angle, translation = PRESETS[preset]
    expected = np.stack([_native_preset_pose(angle, translation, i, length, speed) for i in range(length)])
    assert np.abs(path.c2w - expected).max() < 1e-14
    assert np.array_equal(path.intrinsics, np.tile([0.5, 0.5, 0.5, 0.5], (length, 1)))


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("length,speed", [(81, 1.0), (17, 0.7), (5, 3.0)])
def test_keyframes_reduce_exactly_to_each_preset(preset, length, speed):
    intrinsics = (0.45, 0.55, 0.5, 0.48)
    keyframed = keyframe_path(_preset_as_keyframes(preset, length, speed), length, intrinsics)
    native = preset_path(preset, length, speed, intrinsics)
    assert np.abs(keyframed.c2w - native.c2w).max() < 1e-14
    assert torch.equal(camera_embedding(keyframed, WIDTH, HEIGHT), camera_embedding(native, WIDTH, HEIGHT))


def test_easing_curves_and_holds():
    keys = [Keyframe(4, pan=0.0), Keyframe(12, pan=8.0, ease="linear"), Keyframe(20, pan=0.0, ease="ease-in"),
            Keyframe(28, pan=8.0, ease="ease-out"), Keyframe(36, pan=0.0, ease="ease-in-out")]
    pan = keyframe_values(keys, 41)["pan"]
    assert list(pan[:5]) == [0.0] * 5 and list(pan[36:]) == [0.0] * 5  # held before the first / after the last
    assert pan[8] == 4.0 and pan[10] == 6.0  # linear
    assert pan[16] == 8.0 - 8.0 * 0.25 and pan[18] == 8.0 - 8.0 * 0.5625  # ease-in: u^2
    assert pan[24] == 8.0 * 0.75 and pan[22] == 8.0 * (0.25 * 1.75)  # ease-out: u (2 - u)
    assert pan[32] == 4.0 and pan[30] == 8.0 - 8.0 * 0.15625  # ease-in-out: smoothstep, 3u^2 - 2u^3 at 1/4


def test_keyframe_axes_and_zoom():
    path = keyframe_path([Keyframe(0), Keyframe(4, pan=90.0, y=2.0, zoom=2.0)], 5, (0.4, 0.6, 0.5, 0.5))
    last = path.c2w[-1]
    assert np.allclose(last[:3, :3] @ [0, 0, 1], [1, 0, 0])  # pan 90: looks along +x (right)
    assert np.allclose(last[:3, 3], [0, -2, 0])  # y up = OpenCV -y
    assert np.allclose(path.intrinsics[-1], [0.8, 1.2, 0.5, 0.5])
    assert np.allclose(path.intrinsics[2], [0.6, 0.9, 0.5, 0.5])
    tilt = keyframe_path([Keyframe(0), Keyframe(4, tilt=90.0)], 5).c2w[-1]
    assert np.allclose(tilt[:3, :3] @ [0, 0, 1], [0, -1, 0])  # tilt up: looks along OpenCV -y


def test_json_keyframes_keep_earlier_values():
    keys = parse_keyframes('[{"frame": 0, "x": 1}, {"frame": 8, "pan": 5, "ease": "ease-out"}, {"frame": 16.0}]')
    assert keys == [Keyframe(0, x=1.0), Keyframe(8, pan=5, x=1.0, ease="ease-out"), Keyframe(16, pan=5, x=1.0)]


def test_chained_and_json_keyframes_combine_in_the_node():
    (chain,) = NODES["WanCameraKeyframe"]().add(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, "linear")
    (chain,) = NODES["WanCameraKeyframe"]().add(8, 10.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, "ease-in", previous=chain)
    embedding, width, height, length, plot = NODES["WanCameraKeyframes"]().build(
        WIDTH, HEIGHT, 17, '[{"frame": 16, "pan": 10, "z": 2}]', 0.5, 0.5, 0.5, 0.5, keyframes=chain)
    keys = [Keyframe(0), Keyframe(8, pan=10.0, z=1.0, ease="ease-in"), Keyframe(16, pan=10.0, z=2.0)]
    assert torch.equal(embedding, camera_embedding(keyframe_path(keys, 17), WIDTH, HEIGHT))
    assert (width, height, length) == (WIDTH, HEIGHT, 17)
    assert plot.shape[0] == 1 and plot.shape[-1] == 3 and plot.dtype == torch.float32


def test_preset_node_outputs_native_layout():
    embedding, width, height, length, plot = NODES["WanCameraPreset"]().build("Pan Left", WIDTH, HEIGHT, 9, 1.0, 0.5,
                                                                              0.5, 0.5, 0.5)
    assert embedding.shape == (1, 24, 3, HEIGHT, WIDTH) and (width, height, length) == (WIDTH, HEIGHT, 9)
    check_camera_embedding(embedding)
    assert torch.equal(embedding, camera_embedding(preset_path("Pan Left", 9), WIDTH, HEIGHT))


def _plucker(c2w, fx, fy, cx, cy, row, col):
    """One pixel's (o x d, d) by the definition: the ray through the pixel centre, rotated into the world."""
    d = np.array([(col + 0.5 - cx) / fx, (row + 0.5 - cy) / fy, 1.0])
    d = c2w[:3, :3] @ (d / np.linalg.norm(d))
    return np.concatenate([np.cross(c2w[:3, 3], d), d])


def test_plucker_values_and_frame_folding():
    keys = [Keyframe(0), Keyframe(8, pan=30.0, tilt=-10.0, roll=5.0, x=0.4, y=-0.2, z=1.0, zoom=1.5)]
    path = keyframe_path(keys, 9, (0.5, 0.6, 0.45, 0.5))
    embedding = camera_embedding(path, WIDTH, HEIGHT)[0].double().numpy()
    # 1280x720 poses in a 48x32 frame, narrower than 16:9: fx stretched to 32 * (16/9) / 48 of itself.
    stretch = (HEIGHT * (1280 / 720)) / WIDTH
    for frame in (0, 3, 8):
        fx, fy, cx, cy = path.intrinsics[frame]
        pixels = (stretch * fx * WIDTH, fy * HEIGHT, cx * WIDTH, cy * HEIGHT)
        latent, slot = divmod(frame + 3, 4)  # the first frame is repeated 4 times
        for row, col in ((0, 0), (17, 30), (HEIGHT - 1, WIDTH - 1)):
            expected = _plucker(path.c2w[frame], *pixels, row, col)
            got = embedding[[c * 4 + slot for c in range(6)], latent, row, col]
            assert np.abs(got - expected).max() < 1e-6
    assert np.array_equal(embedding[:, 0].reshape(6, 4, HEIGHT, WIDTH)[:, 1:],
                          np.repeat(embedding[:, 0].reshape(6, 4, HEIGHT, WIDTH)[:, :1], 3, axis=1))


def _pose_file(path, url=True):
    lines = ["https://www.youtube.com/watch?v=example"] if url else []
    for i, (pose, focal) in enumerate(zip(path.c2w, path.intrinsics)):
        w2c = np.linalg.inv(pose)[:3].reshape(-1)
        lines.append(" ".join(repr(float(v)) for v in [i * 33366, *focal, 0, 0, *w2c]))
    return "\n".join(lines)


def test_pose_file_round_trip_and_resampling():
    path = keyframe_path([Keyframe(0), Keyframe(16, pan=-20.0, x=1.0, z=0.5)], 17, (0.5, 0.89, 0.5, 0.5))
    parsed = parse_pose_file(_pose_file(path))
    assert np.abs(parsed.c2w - path.c2w).max() < 1e-12 and np.array_equal(parsed.intrinsics, path.intrinsics)
    embedding, *_ = NODES["WanCameraPoseFile"]().build(_pose_file(path, url=False), WIDTH, HEIGHT, 17)
    assert (embedding - camera_embedding(path, WIDTH, HEIGHT)).abs().max() < 1e-6
    every_other = resample_path(parsed, 9)
    assert np.array_equal(every_other.c2w, parsed.c2w[::2])


def test_plot_shows_the_path():
    still = NODES["WanCameraPreset"]().build("Static", WIDTH, HEIGHT, 9, 1.0, 0.5, 0.5, 0.5, 0.5)[4]
    moving = NODES["WanCameraPreset"]().build("Pan Right", WIDTH, HEIGHT, 9, 1.0, 0.5, 0.5, 0.5, 0.5)[4]
    assert still.shape == moving.shape == (1, 432, 768, 3) and 0 <= float(moving.min()) and float(moving.max()) <= 1
    assert not torch.equal(still, moving)


@pytest.mark.parametrize("text,message", [
    ("[{\"frame\": 0", "not valid JSON"),
    ("{\"frame\": 0}", "JSON list of objects"),
    ("[]", "at least one camera keyframe"),
    ("[{\"pan\": 3}]", "needs a \"frame\""),
    ("[{\"frame\": 1.5}]", "whole number"),
    ("[{\"frame\": 0, \"speed\": 2}]", "Unknown keyframe field(s) speed"),
    ("[{\"frame\": 9}]", "outside the video: frames are 0 to 8"),
    ("[{\"frame\": 0}, {\"frame\": 0, \"pan\": 1}]", "Two keyframes at frame 0"),
    ("[{\"frame\": 0, \"pan\": NaN}]", "pan must be a finite number"),
    ("[{\"frame\": 0, \"x\": \"left\"}]", "x must be a finite number"),
    ("[{\"frame\": 0, \"zoom\": 0}]", "zoom must be > 0"),
    ("[{\"frame\": 0, \"ease\": \"bounce\"}]", "ease must be one of linear, ease-in, ease-out, ease-in-out"),
])
def test_bad_keyframes_are_refused(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NODES["WanCameraKeyframes"]().build(WIDTH, HEIGHT, 9, text, 0.5, 0.5, 0.5, 0.5)


@pytest.mark.parametrize("text,length,message", [
    ("", 9, "holds no poses"),
    ("url\n0 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1", 1, "has 18 numbers; each pose line has 19"),
    ("0 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0\nx y", 1, "line 2 holds something that is not a number"),
    ("0 0.5 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0", 5, "1 poses but the video has 5 frames"),
    ("0 0.5 0.5 0.5 0.5 0 0 0 0 0 0 0 1 0 0 0 0 1 0", 1, "cannot be inverted"),
    ("0 0 0.5 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0", 1, "fx and fy"),
])
def test_bad_pose_files_are_refused(text, length, message):
    with pytest.raises(ValueError, match=message):
        NODES["WanCameraPoseFile"]().build(text, WIDTH, HEIGHT, length)


def test_sizes_and_presets_are_checked():
    node = NODES["WanCameraPreset"]
    assert "width 40 is not a multiple of 16" in node.VALIDATE_INPUTS(width=40, height=32, length=9)
    assert "length" in node.VALIDATE_INPUTS(width=48, height=32, length=8)
    assert node.VALIDATE_INPUTS(width=48, height=32, length=9) is True
    with pytest.raises(ValueError, match="Unknown camera preset 'Orbit'"):
        preset_path("Orbit", 9)
    with pytest.raises(ValueError, match="speed must be a finite number >= 0"):
        preset_path("Pan Up", 9, float("nan"))
    with pytest.raises(ValueError, match="camera embedding"):
        check_camera_embedding(torch.zeros(1, 6, 3, 32, 32))


def test_example_keyframes_are_valid_json():
    keys = json.loads(NODES["WanCameraKeyframes"].INPUT_TYPES()["required"]["keyframes_json"][1]["default"])
    assert [k["frame"] for k in keys] == [0, 40, 80]
