"""Download the real models listed in scripts/models.json into ComfyUI/models, checked by size and SHA-256.

Standard library only (it runs before the pack's requirements are installed). The Hub answers a HEAD request on
`<hub>/<repo>/resolve/main/<path>` for an LFS file with a redirect that carries `X-Linked-Size` and
`X-Linked-Etag` (the file's SHA-256); small non-LFS files carry neither, so only their recorded values check them.
A file is written to `<name>.part` (resumed with a Range request after an interruption) and renamed only once
its size and SHA-256 match, so a failed download never leaves a file a loader would pick up.
"""

from __future__ import annotations

import hashlib
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


def hub_metadata(url: str) -> tuple[int | None, str | None]:
    """(size, sha256) the Hub reports for a file; None where it reports none (non-LFS files)."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        response = urllib.request.build_opener(_NoRedirect).open(request, timeout=30)
        headers = response.headers
    except urllib.error.HTTPError as e:
        if e.code not in (301, 302, 303, 307, 308):
            raise SystemExit(f"{url}: HTTP {e.code} {e.reason}") from e
        headers = e.headers
    size = headers.get("X-Linked-Size")
    etag = (headers.get("X-Linked-Etag") or "").strip('"')
    return (int(size) if size else None), (etag if len(etag) == 64 else None)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(entry: dict, url: str) -> tuple[int | None, str | None]:
    """The size and SHA-256 to check against: the recorded ones, which must agree with the Hub's."""
    size, sha = hub_metadata(url)
    for name, recorded, hub in (("sha256", entry.get("sha256"), sha), ("size", entry.get("bytes"), size)):
        if recorded is not None and hub is not None and recorded != hub:
            raise SystemExit(f"{url}: the Hub's {name} ({hub}) is not the recorded one ({recorded}); the file changed "
                             "upstream. Check it, then record it again with --record.")
    return entry.get("bytes") or size, entry.get("sha256") or sha


def download(url: str, dest: str, size: int | None, sha256: str | None) -> str:
    """Write `url` to `dest` through `dest.part`; returns the file's SHA-256. Raises SystemExit on a mismatch."""
    part = dest + ".part"
    done = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and done > size:
        os.remove(part)
        done = 0
    if size is None or done < size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = done and response.status == 206
            with open(part, "ab" if resumed else "wb") as out:
                shutil.copyfileobj(response, out, CHUNK)
    actual_size, actual_sha = os.path.getsize(part), _sha256(part)
    if (size is not None and actual_size != size) or (sha256 is not None and actual_sha != sha256):
        os.remove(part)
        raise SystemExit(f"{url}: got {actual_size} bytes with SHA-256 {actual_sha}, expected {size} bytes with "
                         f"{sha256}; the partial file was removed, run again.")
    os.replace(part, dest)
    return actual_sha


def fetch(manifest: dict, sets: list[str], models_dir: str, record: bool = False) -> list[str]:
    """Download every file of the named sets under `models_dir`; with `record`, write sizes and SHA-256s into the
    manifest dict. Files already in place with the recorded SHA-256 are kept. Returns the paths written or kept."""
    unknown = [name for name in sets if name not in manifest["sets"]]
    if unknown:
        raise SystemExit(f"unknown model set(s) {unknown}; choose from {list(manifest['sets'])}.")
    hub = os.environ.get("HF_ENDPOINT", manifest["hub"]).rstrip("/")  # huggingface_hub's mirror variable
    paths = []
    for name in sets:
        for entry in manifest["sets"][name]:
            folder = os.path.join(models_dir, entry["target"])
            os.makedirs(folder, exist_ok=True)
            for file in entry["files"]:
                dest = os.path.join(folder, file.get("as", os.path.basename(file["path"])))
                paths.append(dest)
                if os.path.exists(dest) and file.get("sha256") and _sha256(dest) == file["sha256"]:
                    continue
                url = f"{hub}/{entry['repo']}/resolve/main/{file['path']}"
                size, sha = _expected(file, url)
                print(f"downloading {entry['repo']}/{file['path']} -> {dest}")
                actual_sha = download(url, dest, size, sha)
                if record:
                    file["bytes"], file["sha256"] = os.path.getsize(dest), actual_sha
    return paths


def save_manifest(manifest: dict, path: str = MANIFEST) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
