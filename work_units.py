"""Long library work (VAE decodes and encodes, text encoders) in units the nodes can show and cancel between.

A unit is one call of a chosen submodule: the Wan VAE's decoder or encoder (one latent frame or frame chunk of one
tile), a DC-AE stage block, a text encoder layer. The library says which modules and how many calls make the whole
job; `counted_calls` reports each finished call as `progress(done, total)`. The nodes pass a `progress` that updates
ComfyUI's progress bar and raises when the user pressed Cancel, so the job stops between two units and returns
nothing. Counting by forward hooks leaves the computation itself as it was: outputs are bit-identical with or
without a `progress`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

Progress = Callable[[int, int], None]


@contextmanager
def counted_calls(modules: Iterable[torch.nn.Module], total: int, progress: Progress | None) -> Iterator[None]:
    """Inside the block, `progress(done, total)` after every call of any of `modules`; whatever `progress` raises
    ends the work there. The hooks go when the block ends, however it ends."""
    if progress is None:
        yield
        return
    done = 0

    def finished(module, args, output) -> None:
        nonlocal done
        done += 1
        progress(done, total)

    handles = [module.register_forward_hook(finished) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
