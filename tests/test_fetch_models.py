"""scripts/fetch_models.py against a local stand-in for the Hub: LFS redirects with size and SHA-256 headers,
git SHA-1 ETags of small files, Range requests, mirrors without hashes, cut-off bodies, files that do not match,
manifests whose targets leave the models folder, and a server that is not there."""

import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WEIGHTS = os.urandom(300_000)
CONFIG = b'{"hidden": 8}'


def _git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub(BaseHTTPRequestHandler):
    """`/<repo>/resolve/main/<path>`: LFS files (.safetensors) redirect to /cdn with X-Linked-* headers, small files
    carry their git blob SHA-1 as ETag, as the Hub answers; `hashes = False` is a mirror that sends no hash (nor LFS
    size), `cut` bytes are left off the end of each body while its full length is announced."""
    files = {"org/model/resolve/main/w.safetensors": WEIGHTS, "org/model/resolve/main/config.json": CONFIG}
    served = {}  # path -> bytes actually sent (a test may corrupt them)
    ranges = []
    requests = []
    hashes, cut = True, 0

    def log_message(self, *args):
        pass

    def _lookup(self):
        path = self.path.lstrip("/")
        return path, self.files.get(path.removeprefix("cdn/"))

    def do_HEAD(self):
        self.requests.append(self.path)
        path, data = self._lookup()
        if data is None:
            self.send_response(404)
            self.end_headers()
        elif path.endswith(".safetensors") and not path.startswith("cdn/"):
            self.send_response(302)
            self.send_header("Location", "/cdn/" + path)
            if self.hashes:
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            if self.hashes and not path.startswith("cdn/"):
                self.send_header("ETag", f'"{_git_sha1(data)}"')
            self.end_headers()

    def do_GET(self):
        path, data = self._lookup()
        if path.endswith(".safetensors") and not path.startswith("cdn/"):
            return self.do_HEAD()
        self.requests.append(self.path)
        body = self.served.get(path.removeprefix("cdn/"), data)
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            self.ranges.append(start)
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:len(body) - self.cut])


@pytest.fixture
def hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    Hub.served, Hub.ranges, Hub.requests, Hub.hashes, Hub.cut = {}, [], [], True, 0
    yield Hub
    server.shutdown()


def _manifest(sha=None, size=None):
    return {"hub": "https://unused.example", "sets": {"demo": [{
        "target": "diffusion_models/model", "repo": "org/model",
        "files": [{"path": "w.safetensors", "bytes": size, "sha256": sha},
                  {"path": "config.json", "as": "config.json", "bytes": None, "sha256": None}]}]}}


def test_downloads_into_the_model_folder_and_records_size_and_sha256(hub, tmp_path):
    fetch = _script("fetch_models")
    manifest = _manifest()
    paths = fetch.fetch(manifest, ["demo"], str(tmp_path), record=True)
    folder = tmp_path / "diffusion_models" / "model"
    assert paths == [str(folder / "w.safetensors"), str(folder / "config.json")]
    assert (folder / "w.safetensors").read_bytes() == WEIGHTS and (folder / "config.json").read_bytes() == CONFIG
    files = manifest["sets"]["demo"][0]["files"]
    assert files[0]["sha256"] == hashlib.sha256(WEIGHTS).hexdigest() and files[0]["bytes"] == len(WEIGHTS)
    assert files[1]["sha256"] == hashlib.sha256(CONFIG).hexdigest()
    assert not list(folder.glob("*.part"))


def test_a_corrupted_transfer_leaves_no_file(hub, tmp_path):
    fetch = _script("fetch_models")
    hub.served["org/model/resolve/main/w.safetensors"] = bytes(len(WEIGHTS))  # right size, wrong bytes
    with pytest.raises(SystemExit, match="SHA-256"):
        fetch.fetch(_manifest(), ["demo"], str(tmp_path))
    assert not any(p.name.startswith("w.safetensors") for p in (tmp_path / "diffusion_models" / "model").iterdir())


def test_a_recorded_sha256_the_hub_no_longer_has_stops_before_downloading(hub, tmp_path):
    fetch = _script("fetch_models")
    with pytest.raises(SystemExit, match="changed upstream"):
        fetch.fetch(_manifest(sha="0" * 64), ["demo"], str(tmp_path))
    assert not (tmp_path / "diffusion_models" / "model" / "w.safetensors.part").exists()


def test_an_interrupted_download_resumes_with_a_range_request(hub, tmp_path):
    fetch = _script("fetch_models")
    folder = tmp_path / "diffusion_models" / "model"
    folder.mkdir(parents=True)
    (folder / "w.safetensors.part").write_bytes(WEIGHTS[:1000])
    fetch.fetch(_manifest(), ["demo"], str(tmp_path))
    assert hub.ranges == [1000] and (folder / "w.safetensors").read_bytes() == WEIGHTS


def test_files_in_place_with_the_recorded_sha256_are_kept(hub, tmp_path):
    fetch = _script("fetch_models")
    manifest = _manifest()
    fetch.fetch(manifest, ["demo"], str(tmp_path), record=True)
    hub.files = {}  # the Hub is gone: nothing may be requested again
    try:
        assert len(fetch.fetch(manifest, ["demo"], str(tmp_path))) == 2
    finally:
        hub.files = {"org/model/resolve/main/w.safetensors": WEIGHTS, "org/model/resolve/main/config.json": CONFIG}


@pytest.mark.parametrize("target,name", [("../../x", None), ("{tmp}/absolute_target", None), ("vae", "../../../x"),
                                         ("diffusion_models/../../x", None), ("vae", "{tmp}/absolute_as")])
def test_targets_outside_the_models_folder_are_refused_before_any_download(hub, tmp_path, target, name):
    manifest = _manifest()
    entry = manifest["sets"]["demo"][0]
    entry["target"] = target.format(tmp=tmp_path)
    if name is not None:
        entry["files"][1]["as"] = name.format(tmp=tmp_path)
    models = tmp_path / "a" / "b" / "models"
    models.mkdir(parents=True)
    with pytest.raises(SystemExit, match="is not a path inside the models folder"):
        _script("fetch_models").fetch(manifest, ["demo"], str(models))
    assert hub.requests == [] and [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_file_without_any_hash_is_not_placed_unless_allowed(hub, tmp_path):
    """A mirror that sends no hash, nothing recorded: refused before downloading; with allow_unverified a cut-off
    body is still refused (the length the server announced), and a whole one is placed."""
    fetch = _script("fetch_models")
    hub.hashes, hub.cut = False, 1000
    folder = tmp_path / "diffusion_models" / "model"
    with pytest.raises(SystemExit, match="no.* hash for this file.*--allow-unverified"):
        fetch.fetch(_manifest(), ["demo"], str(tmp_path))
    assert hub.requests == ["/org/model/resolve/main/w.safetensors"], "only the HEAD request"
    with pytest.raises(SystemExit, match=f"sent {len(WEIGHTS) - 1000} of the {len(WEIGHTS)} bytes"):
        fetch.fetch(_manifest(), ["demo"], str(tmp_path), allow_unverified=True)
    assert not (folder / "w.safetensors").exists()
    hub.cut = 0
    fetch.fetch(_manifest(), ["demo"], str(tmp_path), allow_unverified=True)
    assert (folder / "w.safetensors").read_bytes() == WEIGHTS and (folder / "config.json").read_bytes() == CONFIG


def test_a_cut_off_body_of_a_known_size_is_never_placed(hub, tmp_path):
    fetch = _script("fetch_models")
    hub.cut = 10
    with pytest.raises(SystemExit, match="run again to resume"):
        fetch.fetch(_manifest(), ["demo"], str(tmp_path))
    assert not (tmp_path / "diffusion_models" / "model" / "w.safetensors").exists()


def test_small_files_are_checked_by_their_git_sha1(hub, tmp_path):
    fetch = _script("fetch_models")
    hub.served["org/model/resolve/main/config.json"] = b'{"hidden": 9}'  # same length, other bytes
    with pytest.raises(SystemExit, match="git SHA-1"):
        fetch.fetch(_manifest(), ["demo"], str(tmp_path))
    assert not (tmp_path / "diffusion_models" / "model" / "config.json").exists()


def test_a_dead_endpoint_is_one_line_and_a_nonzero_exit(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket is closed
    script = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r}); import fetch_models; "
              f"fetch_models.fetch({_manifest()!r}, ['demo'], {str(tmp_path)!r})")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "cannot reach the server" in done.stderr and "HF_ENDPOINT" in done.stderr


def test_unknown_set_is_refused():
    with pytest.raises(SystemExit, match="unknown model set"):
        _script("fetch_models").fetch(_manifest(), ["sdxl"], "/nonexistent")


def test_the_real_manifest_names_what_the_example_workflows_load():
    """Every model file an example workflow's loader names is in scripts/models.json, in the right folder."""
    manifest = _script("fetch_models").load_manifest()
    placed = set()
    for entries in manifest["sets"].values():
        for entry in entries:
            folder, _, sub = entry["target"].partition("/")
            if sub:
                placed.add((folder, sub))
            placed.update((folder, f.get("as", os.path.basename(f["path"]))) for f in entry["files"])
    folders = {"SanaTransformerLoader": "diffusion_models", "WanTransformerLoader": "diffusion_models",
               "SanaTextEncoderLoader": "text_encoders", "WanTextEncoderLoader": "text_encoders",
               "DCAELoader": "vae", "WanVAELoader": "vae", "WanCLIPVisionLoader": "clip_vision"}
    api = os.path.join(ROOT, "workflows", "api")
    for name in ("sana_text_to_image.json", "sana_sprint_text_to_image.json", "wan_text_to_video.json",
                 "wan_image_to_video.json", "wan_first_last_frame.json", "wan22_t2v_a14b.json", "wan22_i2v_a14b.json",
                 "wan22_ti2v_5b.json"):
        with open(os.path.join(api, name)) as f:
            for node in json.load(f).values():
                if node["class_type"] in folders:
                    inputs = node["inputs"]
                    file = inputs.get("model_name", inputs.get("vae_name", inputs.get("clip_name")))
                    assert (folders[node["class_type"]], file) in placed, (name, node)
