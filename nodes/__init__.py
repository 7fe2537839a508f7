"""Node registry: every node module contributes its classes and display names here."""

from . import (
    camera, camera_video, controlnet, decode, guidance, latent, lora, memory, native, sana, sana_video, schedule, speed,
    sprint, text, vace, video, wan, wan22, wan_image,
)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (sana, sprint, wan, guidance, schedule, text, latent, decode, video, controlnet, speed, lora, memory,
                vace, native, wan_image, camera, camera_video, sana_video, wan22):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
