"""Sana-Video's prompt recipe: Sana's (text/sana_prompt.py) with the video "complex human instruction", as
diffusers' `SanaVideoPipeline.encode_prompt` and `SanaImageToVideoPipeline.encode_prompt` encode it.

The pipelines append nothing to the prompt; their documented usage (and NVlabs' inference scripts) end it with
" motion score: N." to set how much the video moves, which `with_motion_score` adds.
"""

from __future__ import annotations

from ..work_units import Progress
from .sana_prompt import encode_sana_prompt

# diffusers' default `complex_human_instruction` of `SanaVideoPipeline.__call__` and `SanaImageToVideoPipeline
# .__call__` (diffusers 0.42, pipelines/sana_video/, the same in both). Data, copied verbatim.
SANA_VIDEO_CHI = [
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for video generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, motion, and temporal relationships to create vivid and dynamic scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat slowly settling into a curled position, peacefully falling asleep on a warm sunny windowsill, with gentle sunlight filtering through surrounding pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps gradually lighting up, a diverse crowd of people in colorful clothing walking past, and a double-decker bus smoothly passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
]

# The motion score of diffusers' SanaVideoPipeline example.
DEFAULT_MOTION_SCORE = 30


def with_motion_score(prompt: str, motion_score: int) -> str:
    """`prompt` ending in " motion score: N." as the Sana-Video examples write it; 0 leaves the prompt as it is."""
    return prompt + f" motion score: {motion_score}." if motion_score else prompt


def encode_sana_video_prompt(text_encoder, tokenizer, prompts: list[str], negative: bool = False,
                             max_sequence_length: int = 300, progress: Progress | None = None):
    """As `encode_sana_prompt`, with Sana-Video's instruction before positive prompts."""
    return encode_sana_prompt(text_encoder, tokenizer, prompts, negative, max_sequence_length,
                              progress=progress, chi=SANA_VIDEO_CHI)
