"""Node registry: every node module contributes its classes and display names here."""

from . import decode, guidance, latent, sana, schedule, sprint, text, video, wan

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (sana, sprint, wan, guidance, schedule, text, latent, decode, video):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
