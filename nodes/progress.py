"""The `progress` the nodes hand to long library work (VAE decodes and encodes, text encoders): ComfyUI's progress
bar and Cancel, through the samplers' step callback."""

from __future__ import annotations

from .. import comfy_bridge as bridge
from ..work_units import Progress


def unit_progress(parts: int = 1) -> list[Progress]:
    """One `progress(done, total)` per library call of a node, all of them on one bar: call `i` of `parts` equal
    calls shows `i * total + done` of `parts * total`. Each raises ComfyUI's interrupt when Cancel was pressed."""
    step = bridge.step_callback(parts)

    def part(index: int) -> Progress:
        return lambda done, total: step(index * total + done, parts * total, None)

    return [part(index) for index in range(parts)]
