"""A camera path -> the Plücker ray embedding that Wan Fun-Camera's control adapter reads, in ComfyUI's native
WAN_CAMERA_EMBEDDING layout [1, 24, (frames + 3) / 4, height, width], so native and pack nodes mix.

Plücker coordinates (Sitzmann et al., 2021, "Light Field Networks"; CameraCtrl's ray_condition): for every pixel
centre, the ray direction d (unit, in world axes) and the moment o x d of the camera centre o. Poses are made
relative to the first frame and intrinsics fitted to the frame's aspect as ComfyUI's native node does (for poses
shot at 1280x720). The first frame is repeated 4 times and every 4 frames folded into one latent frame's 24
channels (channel = plücker_channel * 4 + frame_in_group), the layout of the Wan VAE's 4x temporal stride.
"""

from __future__ import annotations

import numpy as np
import torch

from .camera_path import POSE_SOURCE_SIZE, CameraPath, check_length

PLUCKER_CHANNELS = 6
FRAMES_PER_LATENT = 4
EMBEDDING_CHANNELS = PLUCKER_CHANNELS * FRAMES_PER_LATENT
SIZE_STEP = 16  # the adapter folds 8x8 pixels into channels, then convolves 2x2 patches


def relative_poses(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world poses relative to the first camera (the first is the identity), float32."""
    first_inverse = np.linalg.inv(c2w[0])
    return np.stack([np.eye(4)] + [first_inverse @ pose for pose in c2w[1:]]).astype(np.float32)


def pixel_intrinsics(intrinsics: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised (fx, fy, cx, cy) -> pixels [n, 4], float32; the focal length along the cropped axis is stretched
    so poses shot at 1280x720 keep their field of view in the centre crop of a `width` x `height` frame."""
    fx, fy, cx, cy = (intrinsics[:, k].astype(np.float64) for k in range(4))
    source_ratio = POSE_SOURCE_SIZE[0] / POSE_SOURCE_SIZE[1]
    if source_ratio > width / height:
        fx = (height * source_ratio) * fx / width
    else:
        fy = (width / source_ratio) * fy / height
    return np.stack([fx * width, fy * height, cx * width, cy * height], 1).astype(np.float32)


def plucker_rays(c2w: torch.Tensor, focal: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """One camera's rays [height, width, 6] (o x d, d) from a float32 pose [4, 4] and pixel (fx, fy, cx, cy)."""
    rows, cols = torch.meshgrid(torch.linspace(0, height - 1, height), torch.linspace(0, width - 1, width),
                                indexing="ij")
    u, v = cols.reshape(-1) + 0.5, rows.reshape(-1) + 0.5
    fx, fy, cx, cy = focal
    xs, ys = (u - cx) / fx, (v - cy) / fy
    directions = torch.stack((xs, ys, torch.ones_like(xs)), dim=-1)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    rays_d = directions @ c2w[:3, :3].transpose(-1, -2)
    rays_o = c2w[:3, 3].expand_as(rays_d)
    return torch.cat([torch.linalg.cross(rays_o, rays_d, dim=-1), rays_d], dim=-1).reshape(height, width, 6)


def check_embedding_size(width: int, height: int) -> None:
    if width < SIZE_STEP or height < SIZE_STEP or width % SIZE_STEP or height % SIZE_STEP:
        raise ValueError(f"width and height must be multiples of {SIZE_STEP} (the camera adapter folds 8x8 pixels "
                         f"and convolves 2x2 cells), got {width}x{height}.")


def camera_embedding(path: CameraPath, width: int, height: int) -> torch.Tensor:
    """WAN_CAMERA_EMBEDDING [1, 24, (frames + 3) / 4, height, width], float32 on the CPU."""
    check_length(path.frames)
    check_embedding_size(width, height)
    poses = torch.from_numpy(relative_poses(path.c2w))
    focal = torch.from_numpy(pixel_intrinsics(path.intrinsics, width, height))
    frames = torch.stack([plucker_rays(poses[i], focal[i], width, height) for i in range(path.frames)])
    frames = torch.cat([frames[:1].expand(FRAMES_PER_LATENT - 1, -1, -1, -1), frames])  # [F + 3, H, W, 6]
    grouped = frames.view(-1, FRAMES_PER_LATENT, height, width, PLUCKER_CHANNELS)  # [T, 4, H, W, 6]
    return grouped.permute(4, 1, 0, 2, 3).reshape(EMBEDDING_CHANNELS, -1, height, width).unsqueeze(0).contiguous()


def check_camera_embedding(embedding) -> None:
    """A WAN_CAMERA_EMBEDDING from any node (the pack's or native WanCameraEmbedding)."""
    if not isinstance(embedding, torch.Tensor) or embedding.ndim != 5 or embedding.shape[1] != EMBEDDING_CHANNELS:
        shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
        raise ValueError(f"The camera conditions must be a camera embedding [1, {EMBEDDING_CHANNELS}, latent frames, "
                         f"height, width] (Wan Camera Preset / Keyframes / Pose File, or WanCameraEmbedding), got "
                         f"{shape}.")
