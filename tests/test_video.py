"""MP4 writing: frame count, size, rate and content survive a round trip through PyAV."""

import os
import signal
import subprocess
import sys
import types

import av
import pytest
import torch

from sana_wan import NODE_CLASS_MAPPINGS as NODES
from sana_wan import comfy_bridge as bridge
from sana_wan.video.files import write_new_file
from sana_wan.video.mp4 import split_videos, write_mp4

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.codec_context.name, float(stream.average_rate)


def test_round_trip(tmp_path):
    t = torch.linspace(0, 1, 9)[:, None, None, None]
    frames = (t * torch.ones(9, 32, 48, 3)).clone()
    frames[..., 0] = torch.linspace(0, 1, 48)
    path = str(tmp_path / "a.mp4")
    write_mp4(frames, path, fps=16, crf=0)
    decoded, codec, rate = _read(path)
    assert (len(decoded), decoded[0].shape, codec, rate) == (9, (32, 48, 3), "h264", 16.0)
    back = torch.tensor(decoded[4], dtype=torch.float32) / 255
    assert (back - frames[4]).abs().mean() < 0.02


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = str(tmp_path / "odd.mp4")
    write_mp4(torch.rand(5, 33, 47, 3), path, fps=8)
    decoded, _, _ = _read(path)
    assert decoded[0].shape == (34, 48, 3) and len(decoded) == 5


def test_split_batch_of_videos():
    frames = torch.arange(18.0).reshape(18, 1, 1, 1).expand(18, 2, 2, 3)
    videos = split_videos(frames, 9)
    assert [v.shape[0] for v in videos] == [9, 9] and videos[1][0, 0, 0, 0] == 9
    assert len(split_videos(frames, 0)) == 1
    with pytest.raises(ValueError, match="do not split"):
        split_videos(frames, 7)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(torch.rand(2, 8, 8, 3), str(tmp_path / "x.mp4"), fps=0)
    with pytest.raises(ValueError, match="frames"):
        write_mp4(torch.rand(8, 8, 3), str(tmp_path / "x.mp4"), fps=16)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)


@pytest.fixture
def comfy_output(monkeypatch, tmp_path):
    """A stand-in for ComfyUI's folder_paths with its output folder in tmp_path/output; `counter` is the counter
    get_save_image_path answers (ComfyUI's scan can be stale when another save is running)."""
    output = tmp_path / "output"
    output.mkdir()
    state = {"counter": None}
    folder_paths = types.ModuleType("folder_paths")

    def get_save_image_path(prefix, output_dir, width=0, height=0):
        subfolder, filename = os.path.split(os.path.normpath(prefix))
        folder = os.path.join(output_dir, subfolder)
        os.makedirs(folder, exist_ok=True)
        return folder, filename, state["counter"] or 1, subfolder, prefix

    folder_paths.get_save_image_path = get_save_image_path
    folder_paths.get_output_directory = lambda: str(output)
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    return output, state


def _save(prefix, frames=None):
    frames = torch.rand(5, 16, 16, 3) if frames is None else frames
    return NODES["SaveWanVideo"]().save(frames, 16.0, prefix, 0, 19)["ui"]["images"]


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("prefix", ["probe/sana_00001_.png\x00", "probe/justname\x00", "probe/two\nlines",
                                    "probe/\x1b[31mred"])
def test_control_characters_in_a_prefix_are_refused_and_nothing_is_written(comfy_output, prefix):
    output, _ = comfy_output
    (output / "probe").mkdir()
    (output / "probe" / "sana_00001_.png").write_bytes(PNG)
    with pytest.raises(ValueError, match="^filename_prefix .* control characters"):
        _save(prefix)
    assert _files(output) == {"sana_00001_.png": PNG}
    message = NODES["SaveWanVideo"].VALIDATE_INPUTS(prefix)
    assert isinstance(message, str) and message.startswith("filename_prefix") and "control characters" in message
    assert NODES["SaveWanVideo"].VALIDATE_INPUTS("probe/wan") is True


def test_an_existing_file_is_never_replaced(comfy_output):
    """Where ComfyUI's counter points at a name that exists meanwhile, the next free counter is taken."""
    output, state = comfy_output
    (output / "v_00001_.mp4").write_bytes(PNG)
    (output / "v_00002_.mp4").write_bytes(PNG)
    state["counter"] = 1
    assert [item["filename"] for item in _save("v")] == ["v_00003_.mp4"]
    assert _files(output)["v_00001_.mp4"] == PNG and _files(output)["v_00002_.mp4"] == PNG
    assert len(_read(str(output / "v_00003_.mp4"))[0]) == 5
    assert sorted(_files(output)) == ["v_00001_.mp4", "v_00002_.mp4", "v_00003_.mp4"], "no temporary file is left"


def test_a_failed_write_leaves_nothing(tmp_path):
    def fail(path):
        open(path, "wb").write(b"half a video")
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        write_new_file(str(tmp_path), "v", 1, "mp4", fail)
    assert os.listdir(tmp_path) == []


def test_without_hard_links_the_name_is_still_never_replaced(tmp_path, monkeypatch):
    """File systems without hard links (FAT, exFAT, some shares): the name is reserved with O_EXCL, then filled."""
    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "v_00001_.mp4").write_bytes(PNG)
    name = write_new_file(str(tmp_path), "v", 1, "mp4", lambda path: open(path, "wb").write(b"video"))
    assert name == "v_00002_.mp4" and _files(tmp_path) == {"v_00001_.mp4": PNG, "v_00002_.mp4": b"video"}


def test_a_save_killed_half_way_leaves_only_a_hidden_temporary_file(tmp_path):
    """kill -9 while the file is written: nothing under an output's name, only `.<name>_<random>.tmp`, which the next
    save does not count (it takes counter 1)."""
    files = os.path.join(ROOT, "video", "files.py")
    script = (f"import importlib.util, os, signal\n"
              f"spec = importlib.util.spec_from_file_location('files', {files!r})\n"
              f"files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)\n"
              f"def write(path):\n"
              f"    open(path, 'wb').write(b'half a video')\n"
              f"    os.kill(os.getpid(), signal.SIGKILL)\n"
              f"files.write_new_file({str(tmp_path)!r}, 'v', 1, 'mp4', write)\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == -signal.SIGKILL
    (left,) = os.listdir(tmp_path)
    assert left.startswith(".v_") and left.endswith(".tmp")
    assert write_new_file(str(tmp_path), "v", 1, "mp4", lambda path: open(path, "wb").write(b"video")) == "v_00001_.mp4"


def test_standalone_outputs_stay_in_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for prefix in ("../outside", "/tmp/outside", "a/../../outside"):
        with pytest.raises(ValueError, match="outside the output folder"):
            bridge.output_location(prefix, 16, 16)
    folder, filename, counter, subfolder = bridge.output_location("videos/wan", 16, 16)
    assert (folder, filename, counter, subfolder) == (str(tmp_path / "output" / "videos"), "wan", 1, "videos")
