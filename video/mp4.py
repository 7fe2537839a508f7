"""Writing frames to H.264 MP4 with PyAV (the encoder ComfyUI itself uses for SaveVideo)."""

from __future__ import annotations

from fractions import Fraction

import av
import torch


def split_videos(frames: torch.Tensor, frames_per_video: int) -> list[torch.Tensor]:
    """IMAGE frames of a batch of videos ([B*F,H,W,3]) back into B videos; 0 = all frames are one video."""
    if frames_per_video <= 0 or frames_per_video >= frames.shape[0]:
        return [frames]
    if frames.shape[0] % frames_per_video:
        raise ValueError(
            f"{frames.shape[0]} frames do not split into videos of {frames_per_video} frames; connect the decoder's "
            "frame_count output, or use 0 for one video."
        )
    return list(frames.split(frames_per_video))


def even_size(frames: torch.Tensor) -> torch.Tensor:
    """H.264 in yuv420p needs even width and height: repeat the last row / column where one is odd."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return torch.nn.functional.pad(frames.permute(0, 3, 1, 2), (0, pad_w, 0, pad_h), mode="replicate").permute(0, 2, 3, 1)


def write_mp4(frames: torch.Tensor, path: str, fps: float, crf: int = 19) -> None:
    """Encode [F,H,W,3] frames in 0..1 as H.264 (yuv420p, even size) at `fps`."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"Expected frames [F, H, W, 3], got {tuple(frames.shape)}.")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}.")
    frames = even_size(frames)
    pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for pixel_frame in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixel_frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
