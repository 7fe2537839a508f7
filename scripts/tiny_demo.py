"""Tiny demo files for every example workflow, and the examples' tiny twins.

    python scripts/tiny_demo.py --models COMFYUI/models --input COMFYUI/input   # in ComfyUI's Python (needs torch)
    python scripts/tiny_demo.py --twins     # rewrite workflows/tiny/ from workflows/api/ (after editing an example)

The files: tiny random models of the real architectures (Sana, Sana-Sprint, Sana ControlNet, Sana-Video, Wan2.1
T2V, I2V, FLF2V, VACE and Fun-Camera, Wan2.2 A14B expert pairs and TI2V-5B, two Wan LoRAs, their text encoders, CLIP
vision and VAEs; a few MB, for trying the graphs and the API, not for pictures), and the sample inputs the examples
load (`input_image.png`, `input_video.mp4`, `control_video.mp4`, `reference.png`, `sana_controlnet_hed.png`:
synthetic, a square moving over a gradient, and an edge map).

A tiny twin (workflows/tiny/NAME.json) is the API workflow workflows/api/NAME.json with every real file name
replaced by its tiny counterpart, small sizes and few steps (seconds on a CPU), and outputs under `tiny/`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

PACK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API, TINY = os.path.join(PACK, "workflows", "api"), os.path.join(PACK, "workflows", "tiny")
sys.path.insert(0, os.path.join(PACK, "tests"))  # the tiny-model builders

EXAMPLE_INPUTS = {"image": "input_image.png", "video": "input_video.mp4", "control_video": "control_video.mp4",
                  "reference": "reference.png", "hed": "sana_controlnet_hed.png"}
INPUT_SIZE = (96, 64, 81)  # sample pictures and videos: width, height, frames (the Wan examples take 81)
SANA_SIZE, WAN_SIZE = {"width": 96, "height": 64}, {"width": 48, "height": 32}
WAN_FRAMES = 9
# Per example: node id -> inputs of the tiny twin (on top of the file names).
SETTINGS = {
    "sana_text_to_image": {"5": {**SANA_SIZE, "resolution_bin": "off"}, "6": {"steps": 4}},
    "sana_sprint_text_to_image": {"5": {**SANA_SIZE, "resolution_bin": "off"}},
    "sana_controlnet": {"5": {**SANA_SIZE, "resolution_bin": "off"}, "6": {"steps": 4}},
    "sana_image_to_image": {"6": SANA_SIZE, "8": {"steps": 4}},
    "sana_sprint_image_to_image": {"6": SANA_SIZE},
    "wan_text_to_video": {"5": {**WAN_SIZE, "length": WAN_FRAMES}, "6": {"steps": 3}},
    "wan_lora_text_to_video": {"5": {**WAN_SIZE, "length": WAN_FRAMES}, "6": {"steps": 3}},
    "wan_native_ksampler": {"5": {**WAN_SIZE, "length": WAN_FRAMES}, "8": {"steps": 3}},
    "wan_video_to_video": {"7": {"length": WAN_FRAMES}, "8": WAN_SIZE, "10": {"steps": 4}},
    "wan_vace_control": {"7": {"length": WAN_FRAMES}, "8": WAN_SIZE, "10": {**WAN_SIZE, "length": WAN_FRAMES},
                         "11": {"steps": 3}},
    "wan_image_to_video": {"10": {**WAN_SIZE, "length": WAN_FRAMES}, "11": {"steps": 3}},
    "wan_first_last_frame": {"10": {**WAN_SIZE, "length": WAN_FRAMES}, "11": {"steps": 3}},
    "wan_camera_preset": {"6": {**WAN_SIZE, "length": WAN_FRAMES}, "8": {"steps": 3}},
    "wan_camera_keyframes": {"7": {"frame": 4}, "10": {"steps": 3}, "8": {
        **WAN_SIZE, "length": WAN_FRAMES,
        "keyframes_json": '[{"frame": 8, "tilt": 8, "roll": -4, "x": 0.3, "z": 1.6, "zoom": 1.25, '
                          '"ease": "ease-out"}]'}},
    "sana_video_text_to_video": {"5": {**WAN_SIZE, "length": WAN_FRAMES}, "6": {"steps": 3}},
    "sana_video_image_to_video": {"6": {**WAN_SIZE, "length": WAN_FRAMES}, "7": {"steps": 3}},
    "wan22_t2v_a14b": {"6": {**WAN_SIZE, "length": WAN_FRAMES}, "7": {"steps": 4}},
    "wan22_i2v_a14b": {"7": {**WAN_SIZE, "length": WAN_FRAMES}, "8": {"steps": 4}},
    "wan22_ti2v_5b": {"6": {"width": 64, "height": 32, "length": WAN_FRAMES}, "7": {"steps": 3}},
}


def tiny_names() -> dict[str, str]:
    """Real file name in the examples -> the tiny file's name."""
    from tiny_lora import WAN_LORA_FILES
    from tiny_models import SANA_FILES, SANA_SPRINT_FILE, SANA_VIDEO_FILE, WAN22_FILES, WAN_FILES, WAN_I2V_FILES
    from tiny_sana_controlnet import CONTROL_IMAGE, CONTROLNET_FILE
    from tiny_wan_camera import WAN_CAMERA_FILE
    from tiny_wan_vace import WAN_VACE_FILE

    return {
        "Sana_1600M_1024px_BF16_diffusers": SANA_FILES["transformer"], "Sana_Sprint_1.6B_1024px.pth": SANA_SPRINT_FILE,
        "gemma-2-2b-it": SANA_FILES["text_encoder"], "dc-ae-f32c32-sana-1.1-diffusers": SANA_FILES["vae"],
        "Sana_1600M_1024px_BF16_ControlNet_HED.pth": CONTROLNET_FILE, EXAMPLE_INPUTS["hed"]: CONTROL_IMAGE,
        "wan2.1_t2v_1.3B_fp16.safetensors": WAN_FILES["transformer"], "wan2.1_vace_1.3B_fp16.safetensors": WAN_VACE_FILE,
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors": WAN_FILES["text_encoder"], "wan_2.1_vae.safetensors": WAN_FILES["vae"],
        "wan_style_lora.safetensors": WAN_LORA_FILES[0], "wan_motion_lora.safetensors": WAN_LORA_FILES[1],
        "wan2.1_i2v_480p_14B_fp16.safetensors": WAN_I2V_FILES["i2v"],
        "wan2.1_flf2v_720p_14B_fp16.safetensors": WAN_I2V_FILES["flf2v"],
        "clip_vision_h.safetensors": WAN_I2V_FILES["clip_vision"],
        "wan2.1_fun_camera_v1.1_1.3B_bf16.safetensors": WAN_CAMERA_FILE,
        "SANA-Video_2B_480p_diffusers": SANA_VIDEO_FILE,
        **{f"wan2.2_{kind}_{level}_14B_fp8_scaled.safetensors": WAN22_FILES[f"{kind}_{level}"]
           for kind in ("t2v", "i2v") for level in ("high_noise", "low_noise")},
        "wan2.2_ti2v_5B_fp16.safetensors": WAN22_FILES["ti2v"], "wan2.2_vae.safetensors": WAN22_FILES["vae"],
    }


def tiny_twin(name: str, graph: dict, names: dict[str, str]) -> dict:
    """The tiny twin of the API workflow `graph` (example `name`)."""
    twin = json.loads(json.dumps(graph))
    for node_id, node in twin.items():
        inputs = node["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in names:
                inputs[key] = names[value]
        if isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = "tiny/" + inputs["filename_prefix"]
        inputs.update(SETTINGS[name].get(node_id, {}))
    return twin


def twins() -> dict[str, dict]:
    """Example name -> its tiny twin, from workflows/api/."""
    names = tiny_names()
    result = {}
    for file in sorted(os.listdir(API)):
        name = file.removesuffix(".json")
        with open(os.path.join(API, file), encoding="utf-8") as f:
            result[name] = tiny_twin(name, json.load(f), names)
    return result


def write_twins() -> list[str]:
    os.makedirs(TINY, exist_ok=True)
    paths = []
    for name, graph in twins().items():
        paths.append(os.path.join(TINY, f"{name}.json"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            json.dump(graph, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return paths


def write_example_inputs(input_dir: str) -> list[str]:
    """The sample inputs under the names the examples load (the tiny twins load the same files)."""
    from sample_media import as_image_batch, moving_frames, write_mp4
    from tiny_sana_controlnet import edge_map

    os.makedirs(input_dir, exist_ok=True)
    width, height, frames = INPUT_SIZE
    path = {key: os.path.join(input_dir, file) for key, file in EXAMPLE_INPUTS.items()}
    video, control = moving_frames(width, height, frames, seed=0), moving_frames(width, height, frames, seed=1)
    write_mp4(as_image_batch(video), path["video"], fps=16.0)
    write_mp4(as_image_batch(control), path["control_video"], fps=16.0)
    video[0].save(path["image"])
    control[-1].save(path["reference"])
    edge_map(1024, 1024).save(path["hed"])  # the size of the ControlNet example's latent
    return list(path.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="ComfyUI's models folder: write the tiny models there")
    parser.add_argument("--input", help="ComfyUI's input folder: write the sample inputs there")
    parser.add_argument("--twins", action="store_true", help="rewrite workflows/tiny/ from workflows/api/")
    args = parser.parse_args(argv)
    if not (args.models or args.input or args.twins):
        parser.error("nothing to do: give --models and --input, or --twins")
    if args.twins:
        print("tiny twins:", ", ".join(os.path.relpath(p, PACK) for p in write_twins()))
    if args.models or args.input:
        if not (args.models and args.input):
            parser.error("--models and --input go together (the ControlNet's control image goes to --input)")
        from tiny_models import write_all_in_comfy_folders

        write_all_in_comfy_folders(args.models, args.input)
        names = [name for name in tiny_names().values() if not name.endswith(".png")]
        print("tiny models:", ", ".join(names))
        print("sample inputs:", ", ".join(os.path.basename(p) for p in write_example_inputs(args.input)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
