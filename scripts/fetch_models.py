"""Download the real models listed in scripts/models.json into ComfyUI/models, checked by size and hash.

Standard library only (it runs before the pack's requirements are installed). The Hub answers a HEAD request on
`<hub>/<repo>/resolve/main/<path>` for an LFS file with a redirect that carries `X-Linked-Size` and
`X-Linked-Etag` (the file's SHA-256); a small non-LFS file answers with its `Content-Length` and an `ETag` that is
its git blob SHA-1. A file is written to `<name>.part` (resumed with a Range request after an interruption) and
renamed only once its size and hash match, so a failed download never leaves a file a loader would pick up. A file
that neither scripts/models.json nor the server gives a hash for is not downloaded unless `allow_unverified` is set
(`--allow-unverified`); its size is still checked where known. Every target stays inside the models folder, and
network errors end the run with one line.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.json")
CHUNK = 1 << 20


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def load_manifest(path: str = MANIFEST) -> dict:
    with open(path) as f:
        return json.load(f)


def _open(request: urllib.request.Request, timeout: float, opener=None):
    """urlopen whose network failures (refused, unknown host, timeout) end the run with one line; HTTPError passes."""
    try:
        return (opener or urllib.request.build_opener()).open(request, timeout=timeout)
    except urllib.error.HTTPError:
        raise
    except OSError as e:  # URLError included
        raise SystemExit(f"{request.full_url}: cannot reach the server ({getattr(e, 'reason', e)}); check the network "
                         "connection and HF_ENDPOINT.") from None


def hub_metadata(url: str) -> tuple[int | None, str | None, str | None]:
    """(size, sha256, git blob sha1) the Hub reports for a file; None where it reports none."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        response = _open(request, 30, urllib.request.build_opener(_NoRedirect))
        headers, redirected = response.headers, False
    except urllib.error.HTTPError as e:
        if e.code not in (301, 302, 303, 307, 308):
            raise SystemExit(f"{url}: HTTP {e.code} {e.reason}") from None
        headers, redirected = e.headers, True
    size = headers.get("X-Linked-Size") or (None if redirected else headers.get("Content-Length"))
    linked = (headers.get("X-Linked-Etag") or "").strip('"')
    etag = (headers.get("ETag") or "").removeprefix("W/").strip('"')
    sha256 = linked if len(linked) == 64 else None
    git_sha1 = etag if not linked and len(etag) == 40 else None
    return (int(size) if size else None), sha256, git_sha1


def _digests(path: str) -> tuple[str, str]:
    """(SHA-256, git blob SHA-1) of a file."""
    sha256, git_sha1 = hashlib.sha256(), hashlib.sha1()
    git_sha1.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            git_sha1.update(chunk)
    return sha256.hexdigest(), git_sha1.hexdigest()


def _expected(entry: dict, url: str) -> tuple[int | None, str | None, str | None]:
    """The size, SHA-256 and git SHA-1 to check against: the recorded ones, which must agree with the Hub's."""
    size, sha, git_sha1 = hub_metadata(url)
    for name, recorded, hub in (("sha256", entry.get("sha256"), sha), ("size", entry.get("bytes"), size)):
        if recorded is not None and hub is not None and recorded != hub:
            raise SystemExit(f"{url}: the Hub's {name} ({hub}) is not the recorded one ({recorded}); the file changed "
                             "upstream. Check it, then record it again with --record.")
    return entry.get("bytes") or size, entry.get("sha256") or sha, git_sha1


def _receive(url: str, part: str, done: int) -> None:
    """Append the rest of `url` to `part` (from byte `done`); a body shorter than the server announced, or a
    connection that breaks, ends the run (the part is kept: the next run resumes it)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with _open(request, 60) as response:
            resumed = done and response.status == 206
            announced = response.headers.get("Content-Length")
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{url}: HTTP {e.code} {e.reason}") from None
    except (OSError, http.client.HTTPException) as e:
        raise SystemExit(f"{url}: the download broke off ({e}); run again to resume it.") from None
    received = os.path.getsize(part) - (done if resumed else 0)
    if announced is not None and received != int(announced):
        raise SystemExit(f"{url}: the server sent {received} of the {announced} bytes it announced; run again to "
                         "resume the download.")


def download(url: str, dest: str, size: int | None, sha256: str | None, git_sha1: str | None = None,
             allow_unverified: bool = False) -> str:
    """Write `url` to `dest` through `dest.part`; returns the file's SHA-256. Raises SystemExit on a mismatch, and
    before downloading when there is no hash to check the file by and `allow_unverified` is not set."""
    if sha256 is None and git_sha1 is None and not allow_unverified:
        raise SystemExit(f"{url}: neither scripts/models.json nor the server gives a hash for this file, so a damaged "
                         "download could not be told from a good one; record its SHA-256 in scripts/models.json, or "
                         "pass --allow-unverified to take it unchecked.")
    part = dest + ".part"
    done = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and done > size:
        os.remove(part)
        done = 0
    if size is None or done < size:
        _receive(url, part, done)
    actual_size, (actual_sha, actual_git_sha1) = os.path.getsize(part), _digests(part)
    if (size is not None and actual_size != size) or (sha256 is not None and actual_sha != sha256) or \
            (git_sha1 is not None and actual_git_sha1 != git_sha1):
        os.remove(part)
        expected = f"SHA-256 {sha256}" if sha256 is not None else f"git SHA-1 {git_sha1}"
        raise SystemExit(f"{url}: got {actual_size} bytes with SHA-256 {actual_sha}, expected {size} bytes with "
                         f"{expected}; the partial file was removed, run again.")
    os.replace(part, dest)
    return actual_sha


def _inside(models_dir: str, *parts: str) -> str:
    """`models_dir`/parts..., refused unless it stays inside `models_dir` (a manifest is data, not trusted paths)."""
    for part in parts:
        pieces = part.replace("\\", "/").split("/")
        if not part or os.path.isabs(part) or os.path.splitdrive(part)[0] or ".." in pieces:
            raise SystemExit(f"models.json: '{part}' is not a path inside the models folder {models_dir}.")
    return os.path.join(models_dir, *parts)


def fetch(manifest: dict, sets: list[str], models_dir: str, record: bool = False,
          allow_unverified: bool = False) -> list[str]:
    """Download every file of the named sets under `models_dir`; with `record`, write sizes and SHA-256s into the
    manifest dict. Files already in place with the recorded SHA-256 are kept. Returns the paths written or kept.
    Every target is checked to lie inside `models_dir` before anything is downloaded."""
    unknown = [name for name in sets if name not in manifest["sets"]]
    if unknown:
        raise SystemExit(f"unknown model set(s) {unknown}; choose from {list(manifest['sets'])}.")
    hub = os.environ.get("HF_ENDPOINT", manifest["hub"]).rstrip("/")  # huggingface_hub's mirror variable
    planned = [(entry, file, _inside(models_dir, entry["target"], file.get("as", os.path.basename(file["path"]))))
               for name in sets for entry in manifest["sets"][name] for file in entry["files"]]
    for entry, file, dest in planned:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.exists(dest) and file.get("sha256") and _digests(dest)[0] == file["sha256"]:
            continue
        url = f"{hub}/{entry['repo']}/resolve/main/{file['path']}"
        size, sha, git_sha1 = _expected(file, url)
        print(f"downloading {entry['repo']}/{file['path']} -> {dest}")
        actual_sha = download(url, dest, size, sha, git_sha1, allow_unverified)
        if record:
            file["bytes"], file["sha256"] = os.path.getsize(dest), actual_sha
    return [dest for _, _, dest in planned]


def save_manifest(manifest: dict, path: str = MANIFEST) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
