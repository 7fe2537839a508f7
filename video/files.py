"""New output files that never replace an existing file and never appear half-written under an output's name."""

from __future__ import annotations

import contextlib
import os
import unicodedata
import uuid
from typing import Callable


def check_filename_prefix(prefix, name: str = "filename_prefix") -> None:
    """Refuse a prefix with control characters: a NUL ends the path at the C level (the file written would be the
    one named before it), and newlines or escapes make names no file browser shows as typed."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValueError(f"{name} must be a non-empty file name prefix, got {prefix!r}.")
    controls = sorted({f"U+{ord(c):04X}" for c in prefix if unicodedata.category(c) == "Cc"})
    if controls:
        raise ValueError(f"{name} {prefix!r} contains control characters ({', '.join(controls)}); use letters, digits, "
                         "'-', '_' and '/' for subfolders.")


def write_new_file(folder: str, filename: str, counter: int, extension: str, write: Callable[[str], None]) -> str:
    """Write `<filename>_<counter:05>_.<extension>` in `folder`, or the next free counter; returns the name.

    `write(path)` fills a hidden temporary file in the same folder (`.<filename>_<random>.tmp`: ComfyUI's file lists
    and its counter skip it). Only the complete file is then linked under the output name, which fails rather than
    replaces when the name exists (then the next counter is tried). A crash while writing leaves only the temporary
    file; an error removes it.
    """
    temp = os.path.join(folder, f".{filename}_{uuid.uuid4().hex}.tmp")
    os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(temp)
        while True:
            name = f"{filename}_{counter:05}_.{extension}"
            try:
                _place(temp, os.path.join(folder, name))
                return name
            except FileExistsError:
                counter += 1
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)


def _place(temp: str, path: str) -> None:
    """Give the complete `temp` the name `path`; FileExistsError when the name is taken, which is left as it was."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links (FAT, exFAT, some network shares): reserve the name, then move
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(temp, path)
