"""Video output nodes: save decoded frames as MP4 files (one per video of a batch)."""

from __future__ import annotations

import functools

from .. import comfy_bridge as bridge
from ..video.files import check_filename_prefix, write_new_file
from ..video.mp4 import split_videos, write_mp4


class SaveWanVideo:
    DESCRIPTION = ("Saves frames as H.264 MP4 (yuv420p; odd sizes padded by one pixel). A batch of videos from "
                   "the Wan decoder is split with frames_per_video into one file per video.")
    CATEGORY = "Wan"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Wan2.1 makes 16 fps video."}),
            "filename_prefix": ("STRING", {"default": "Wan"}),
            "frames_per_video": ("INT", {"default": 0, "min": 0, "max": 100000,
                                         "tooltip": "0 = all frames in one video; wire the decoder's frame_count."}),
            "crf": ("INT", {"default": 19, "min": 0, "max": 51, "tooltip": "H.264 quality: lower is better."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix):
        """Refuse a prefix with control characters at queue time (a linked prefix is checked when saving)."""
        try:
            if filename_prefix is not None:
                check_filename_prefix(filename_prefix)
        except ValueError as e:
            return str(e)
        return True

    def save(self, images, fps, filename_prefix, frames_per_video, crf):
        results = []
        for video in split_videos(images, frames_per_video):
            folder, filename, counter, subfolder = bridge.output_location(filename_prefix, video.shape[2],
                                                                          video.shape[1])
            write = functools.partial(write_mp4, video, fps=fps, crf=crf)
            name = write_new_file(folder, filename, counter, "mp4", write)
            results.append({"filename": name, "subfolder": subfolder, "type": "output"})
        return {"ui": {"images": results, "animated": (True,)}}


NODE_CLASS_MAPPINGS = {"SaveWanVideo": SaveWanVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SaveWanVideo": "Save Wan Video (MP4)"}
