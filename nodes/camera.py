"""Camera path nodes for the Wan Fun-Camera models: native presets, keyframes (JSON or chained nodes), pose files ->
ComfyUI's native WAN_CAMERA_EMBEDDING (so WanCameraImageToVideo takes them, and the pack takes native ones) and a
plot of the path."""

from __future__ import annotations

from dataclasses import fields

from .. import comfy_bridge as bridge
from ..controlnet.camera_embedding import camera_embedding
from ..controlnet.camera_path import (
    EASINGS, PRESETS, Keyframe, keyframe_path, parse_keyframes, parse_pose_file, preset_path, resample_path,
)
from ..controlnet.camera_plot import plot_camera_path
from ..samplers.latents import WAN_STRIDE, frame_count_problem, size_problem
from .checks import declared_problems, refuse, verdict
from .latent import wan_video_size_inputs

EMBEDDING = "WAN_CAMERA_EMBEDDING"
KEYFRAMES = "WAN_CAMERA_KEYFRAMES"
CATEGORY = "Wan/camera"
OUTPUTS = (EMBEDDING, "INT", "INT", "INT", "IMAGE")
OUTPUT_NAMES = ("camera_embedding", "width", "height", "length", "path_plot")
OUTPUT_TOOLTIPS = ("Plücker ray embedding (ComfyUI's native type): for Wan Camera Image to Video or native "
                   "WanCameraImageToVideo.",
                   "Frame width.", "Frame height.", "Frames.", "The path: top view, angles, position and zoom.")
EXAMPLE_KEYFRAMES = ('[{"frame": 0},\n {"frame": 40, "pan": 20, "z": 0.5, "ease": "ease-in-out"},\n'
                     ' {"frame": 80, "pan": 0, "tilt": 10, "z": 1.5, "zoom": 1.2, "ease": "ease-out"}]')


def _intrinsic_inputs() -> dict:
    tip = "Focal length / principal point as a fraction of the frame (native defaults 0.5)."
    return {name: ("FLOAT", {"default": 0.5, "min": 0.0 if name[0] == "c" else 0.001, "max": 1.0, "step": 0.001,
                             "tooltip": tip}) for name in ("fx", "fy", "cx", "cy")}


def camera_problems(node_class, width, height, length) -> list[str]:
    problems = declared_problems(node_class, {"width": width, "height": height, "length": length})
    for name, value in (("width", width), ("height", height)):
        if value is not None and name not in problems and size_problem(name, value, WAN_STRIDE):
            problems[name] = size_problem(name, value, WAN_STRIDE)
    if length is not None and "length" not in problems and frame_count_problem(length):
        problems["length"] = frame_count_problem(length)
    return list(problems.values())


def _outputs(path, width: int, height: int, title: str, marks=()) -> tuple:
    embedding = camera_embedding(path, width, height).to(bridge.intermediate_device())
    return embedding, width, height, path.frames, plot_camera_path(path, title, marks)


class _CameraPathNode:
    """What the path nodes share: their outputs and the checks of the video size."""

    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = OUTPUTS, OUTPUT_NAMES, OUTPUT_TOOLTIPS

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, length=None):
        return verdict(camera_problems(cls, width, height, length))


class WanCameraPreset(_CameraPathNode):
    DESCRIPTION = ("A camera move for the Wan Fun-Camera models, exactly as ComfyUI's native WanCameraEmbedding: "
                   "pan (sideways / up / down moves), zoom (dolly in / out), roll, at a speed.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"camera_pose": (list(PRESETS), {"default": "Static"}), **wan_video_size_inputs(),
                             "speed": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.1}),
                             **_intrinsic_inputs()}}

    def build(self, camera_pose, width, height, length, speed, fx, fy, cx, cy):
        refuse(camera_problems(self, width, height, length))
        return _outputs(preset_path(camera_pose, length, speed, (fx, fy, cx, cy)), width, height,
                        f"{camera_pose}, speed {speed:g}, {length} frames")


class WanCameraKeyframe:
    DESCRIPTION = ("One camera keyframe; chain several (previous) into Wan Camera Keyframes. Angles in degrees, "
                   "moves in scene units (native Pan Right at speed 1 moves x by 1.5).")
    CATEGORY = CATEGORY
    FUNCTION = "add"
    RETURN_TYPES = (KEYFRAMES,)
    RETURN_NAMES = ("keyframes",)

    @classmethod
    def INPUT_TYPES(cls):
        tips = {"pan": "Degrees, > 0 turns right.", "tilt": "Degrees, > 0 looks up.",
                "roll": "Degrees, > 0 clockwise.", "x": "> 0 moves right.", "y": "> 0 moves up.",
                "z": "> 0 moves forward (dolly in)."}
        values = {name: ("FLOAT", {"default": 0.0, "min": -1e4, "max": 1e4, "step": 0.01, "tooltip": tip})
                  for name, tip in tips.items()}
        return {"required": {
            "frame": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Video frame of this keyframe."}),
            **values,
            "zoom": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 100.0, "step": 0.01,
                               "tooltip": "Focal length factor (1 = unchanged, 2 = twice as close)."}),
            "ease": (list(EASINGS), {"default": "linear", "tooltip": "The curve from the previous keyframe to this."}),
        }, "optional": {"previous": (KEYFRAMES, {"tooltip": "Keyframes of earlier Wan Camera Keyframe nodes."})}}

    def add(self, frame, pan, tilt, roll, x, y, z, zoom, ease, previous=None):
        keyframe = Keyframe(frame, pan, tilt, roll, x, y, z, zoom, ease)
        return ([*(previous or ()), keyframe],)


class WanCameraKeyframes(_CameraPathNode):
    DESCRIPTION = ("A keyframed camera path for the Wan Fun-Camera models: JSON keyframes and / or chained Wan "
                   "Camera Keyframe nodes, eased between keyframes (linear, ease-in, ease-out, ease-in-out).")

    @classmethod
    def INPUT_TYPES(cls):
        names = ", ".join(f.name for f in fields(Keyframe))
        return {"required": {**wan_video_size_inputs(), "keyframes_json": ("STRING", {
            "default": EXAMPLE_KEYFRAMES, "multiline": True,
            "tooltip": f"A JSON list of keyframes with {names}; a value left out keeps the previous keyframe's."}),
            **_intrinsic_inputs()},
            "optional": {"keyframes": (KEYFRAMES, {"tooltip": "Chained Wan Camera Keyframe nodes (added to JSON)."})}}

    def build(self, width, height, length, keyframes_json, fx, fy, cx, cy, keyframes=None):
        refuse(camera_problems(self, width, height, length))
        every = [*(keyframes or ()), *parse_keyframes(keyframes_json)]
        path = keyframe_path(every, length, (fx, fy, cx, cy))
        return _outputs(path, width, height, f"{len(every)} keyframes, {length} frames", [k.frame for k in every])


class WanCameraPoseFile(_CameraPathNode):
    DESCRIPTION = ("A camera path from a RealEstate10K / CameraCtrl pose file (paste its lines): timestamp, fx fy cx "
                   "cy, 0 0 and a 3x4 world-to-camera matrix per line; length poses spread over the file.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"poses": ("STRING", {"default": "", "multiline": True}), **wan_video_size_inputs()}}

    def build(self, poses, width, height, length):
        refuse(camera_problems(self, width, height, length))
        path = parse_pose_file(poses)
        return _outputs(resample_path(path, length), width, height, f"pose file, {path.frames} poses -> {length}")


NODE_CLASS_MAPPINGS = {"WanCameraPreset": WanCameraPreset, "WanCameraKeyframe": WanCameraKeyframe,
                       "WanCameraKeyframes": WanCameraKeyframes, "WanCameraPoseFile": WanCameraPoseFile}
NODE_DISPLAY_NAME_MAPPINGS = {"WanCameraPreset": "Wan Camera Preset", "WanCameraKeyframe": "Wan Camera Keyframe",
                              "WanCameraKeyframes": "Wan Camera Keyframes", "WanCameraPoseFile": "Wan Camera Pose File"}
