"""Where a text encoder's sentencepiece tokenizer is: embedded in a single file, beside the weights, or in a folder.

Comfy-Org's single files embed the sentencepiece model as the uint8 tensor `spiece_model` (ComfyUI's own loaders
read it there); every other layout keeps tokenizer.json and/or the sentencepiece file, whose name differs per family
(Gemma: tokenizer.model, T5: spiece.model), next to the weights or in a pipeline's `tokenizer/` folder.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch

SPIECE_KEY = "spiece_model"


def encoder_and_tokenizer_folders(path: str) -> tuple[str, list[str]]:
    """(weights folder, folders that may hold the tokenizer) of an HF or diffusers pipeline folder."""
    if os.path.isdir(os.path.join(path, "text_encoder")):
        encoder = os.path.join(path, "text_encoder")
        return encoder, [os.path.join(path, "tokenizer"), encoder]
    return path, [path, os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer")]


@dataclass(frozen=True)
class TokenizerFiles:
    """How one family's tokenizer is stored, and what to tell the user when it is nowhere."""

    model: str  # the tokenizer's name in messages
    spm_file: str  # the file name of the sentencepiece model
    from_folder: Callable[[str], object]  # the family's tokenizer, configured, from a folder holding its files
    remedy: str  # what to do when no tokenizer is found

    def require(self, path: str, folders: list[str]) -> str:
        """The first of `folders` that holds tokenizer.json or the sentencepiece model; ValueError saying where it
        looked when none does."""
        names = ("tokenizer.json", self.spm_file)
        folder = next((d for d in folders if any(os.path.isfile(os.path.join(d, n)) for n in names)), None)
        if folder is None:
            places = ", ".join(f"'{p}'" for p in folders)
            raise ValueError(
                f"No {self.model} tokenizer found for '{path}': the weights embed no '{SPIECE_KEY}' tensor and there "
                f"is no {self.spm_file} or tokenizer.json in {places}. {self.remedy}"
            )
        return folder

    def from_spm_bytes(self, spm_bytes: bytes):
        """The tokenizer from a serialized sentencepiece model, written where `from_folder` looks for it."""
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, self.spm_file), "wb") as f:
                f.write(spm_bytes)
            return self.from_folder(folder)

    def pop_from(self, state_dict: dict[str, torch.Tensor], folder: str | None):
        """The tokenizer embedded in `state_dict` (taken out of it, it is no weight), else the one in `folder`."""
        spiece = state_dict.pop(SPIECE_KEY, None)
        if spiece is None:
            return self.from_folder(folder)
        # ComfyUI stores the sentencepiece model's bytes as a flat uint8 tensor.
        return self.from_spm_bytes(spiece.to(torch.uint8).contiguous().numpy().tobytes())
