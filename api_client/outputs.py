"""Downloaded outputs on disk: ComfyUI's subfolders kept under the output folder, and never over an existing file."""

from __future__ import annotations

import contextlib
import os
import uuid


class OutputNameError(ValueError):
    """The server named an output file that cannot be placed inside the output folder."""


def output_path(directory: str, item: dict) -> str:
    """Where an output ({filename, subfolder}) belongs under `directory`: its subfolder kept; a name or subfolder that
    would leave the folder (an absolute path, '..') is refused."""
    parts = [p for p in str(item.get("subfolder") or "").replace("\\", "/").split("/") if p not in ("", ".")]
    name = str(item.get("filename", ""))
    if ".." in parts or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name + "".join(parts):
        raise OutputNameError(f"the server named an output {item.get('subfolder')!r}/{name!r}, which is not a file "
                              "inside the output folder; not saved")
    return os.path.join(directory, *parts, name)


def save_new(path: str, data: bytes) -> str:
    """Write `data` at `path`, or at `<stem>_2<ext>`, `<stem>_3<ext>`, ... when that name exists; returns the path.

    The bytes go to a hidden temporary file first, which is then hard-linked under the first free name (a link fails
    rather than replaces), so an existing file is never touched and no half-written file carries an output's name.
    """
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    temp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.part")
    with open(temp, "xb") as f:
        f.write(data)
    stem, ext = os.path.splitext(name)
    try:
        for n in range(1, 100_000):
            candidate = os.path.join(folder, name if n == 1 else f"{stem}_{n}{ext}")
            try:
                _link_new(temp, candidate)
                return candidate
            except FileExistsError:
                continue
        raise FileExistsError(f"no free name for {path}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)


def _link_new(temp: str, path: str) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system: claim the name with O_EXCL, then move the bytes in
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(temp, path)
