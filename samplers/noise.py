"""Initial noise, drawn exactly as ComfyUI's `comfy.sample.prepare_noise` does, so a seed means the same image.

Written out here (a few lines) because the library must run without ComfyUI; the test compares it with ComfyUI's
function when a ComfyUI checkout is available.
"""

from __future__ import annotations

import torch


def comfy_noise(shape: tuple[int, ...], seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """float32 CPU noise from a CPU generator seeded with `seed` over the whole latent shape.

    With `batch_index` (LATENT["batch_index"], set by ComfyUI's batch nodes) each sample i gets the noise of
    position batch_index[i] in a longer batch, so picking one image from a batch reproduces it alone. An index list
    that does not describe this batch (a latent expanded to a batch of prompts) is not used.
    """
    generator = torch.manual_seed(seed)
    if batch_index is None or len(batch_index) != shape[0]:
        return torch.randn(shape, dtype=torch.float32, generator=generator, device="cpu")
    sample_shape = (1, *shape[1:])
    drawn = [torch.randn(sample_shape, dtype=torch.float32, generator=generator) for _ in range(max(batch_index) + 1)]
    return torch.cat([drawn[i] for i in batch_index], dim=0)
