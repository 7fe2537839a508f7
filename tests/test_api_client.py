"""The queue client's workflow handling: API-format only, overrides by node id or title, clear errors."""

import json
import os
import sys

import pytest

from sana_wan.api_client.workflow import apply_overrides, load_workflow, parse_value, set_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANA_API = os.path.join(ROOT, "workflows", "api", "sana_text_to_image.json")


def test_overrides_by_id_and_by_title_with_json_values():
    graph = load_workflow(SANA_API)
    changed = apply_overrides(graph, ["6.steps=8", "SanaSampler.cfg=2.5", "4.prompt=a red bike",
                                      '4.negative_prompt="42"'])
    assert changed["6"]["inputs"]["steps"] == 8 and changed["6"]["inputs"]["cfg"] == 2.5
    assert changed["4"]["inputs"]["prompt"] == "a red bike" and changed["4"]["inputs"]["negative_prompt"] == "42"
    assert graph["6"]["inputs"]["steps"] == 20, "the loaded graph is not modified"
    assert set_input(graph, "4.prompt", "true")["4"]["inputs"]["prompt"] == "true"


@pytest.mark.parametrize("override, message", [
    ("6.steps", "node.input=value"),
    ("99.steps=1", "no node with id or title '99'"),
    ("6.stepz=1", "has no input 'stepz'"),
])
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(load_workflow(SANA_API), [override])


def test_ui_format_is_refused_with_the_remedy():
    with pytest.raises(ValueError, match="API-format twin"):
        load_workflow(os.path.join(ROOT, "example_workflows", "Sana text to image.json"))


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("false") is False and parse_value("a cat") == "a cat"
    assert parse_value(json.dumps([1, 2])) == [1, 2]


# The command line against a stand-in server (tests/fake_comfyui.py); the real ComfyUI: tests/integration.


@pytest.fixture(params=["websocket", "polling"])
def transport(request, monkeypatch):
    """Following a prompt on /ws (websocket-client installed) or by polling /history (not installed)."""
    if request.param == "polling":
        monkeypatch.setitem(sys.modules, "websocket", None)  # `import websocket` raises ImportError
    return request.param

def _cli(server_url, out, *extra):
    from sana_wan.api_client.cli import main

    return main(["run", SANA_API, "--server", server_url, "--output", str(out), *extra])


def _error_line(capsys) -> str:
    """The run's message: exactly one line, 'error: ...', after any progress bar; no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").split("\n")[-1].rpartition("\r")[2]
    assert last.startswith("error: ") and err.endswith(last + "\n"), err
    return last


def test_outputs_keep_their_subfolders_and_never_replace_a_file(tmp_path, capsys, transport):
    from fake_comfyui import FakeComfyUI

    outputs = {"sana_00001_.png": b"top", "day1/sana_00001_.png": b"in a subfolder"}
    (tmp_path / "sana_00001_.png").write_bytes(b"mine")
    with FakeComfyUI("done", outputs) as server:
        assert _cli(server.url, tmp_path) == 0
        assert _cli(server.url, tmp_path) == 0
    assert (tmp_path / "sana_00001_.png").read_bytes() == b"mine", "an existing file is left as it was"
    assert (tmp_path / "sana_00001__2.png").read_bytes() == b"top"
    assert (tmp_path / "sana_00001__3.png").read_bytes() == b"top", "the second run got the next free name"
    assert (tmp_path / "day1" / "sana_00001_.png").read_bytes() == b"in a subfolder"
    assert (tmp_path / "day1" / "sana_00001__2.png").read_bytes() == b"in a subfolder"
    printed = capsys.readouterr().out.split()
    assert printed[:2] == [str(tmp_path / "sana_00001__2.png"), str(tmp_path / "day1" / "sana_00001_.png")]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "no temporary files left"


@pytest.mark.parametrize("item", [{"filename": "x.png", "subfolder": "../elsewhere"},
                                  {"filename": "../x.png", "subfolder": ""}, {"filename": "/etc/x", "subfolder": ""}])
def test_output_names_that_leave_the_folder_are_refused(tmp_path, item):
    from sana_wan.api_client.outputs import OutputNameError, output_path

    with pytest.raises(OutputNameError, match="not a file inside the output folder"):
        output_path(str(tmp_path), item)


def test_a_server_that_is_not_comfyui_is_one_line(tmp_path, capsys):
    from fake_comfyui import FakeComfyUI

    with FakeComfyUI("not_comfyui") as server:
        assert _cli(server.url, tmp_path) == 1
    line = _error_line(capsys)
    assert "'<html><body>My photo gallery</body></html>'" in line and "is this a ComfyUI server?" in line


def test_no_server_is_one_line(tmp_path, capsys):
    from fake_comfyui import FakeComfyUI

    with FakeComfyUI() as server:
        url = server.url  # a port nothing listens on once the stand-in stopped
    assert _cli(url, tmp_path) == 1
    assert f"cannot reach {url}/system_stats" in _error_line(capsys)


def test_a_prompt_that_does_not_finish_in_time_is_one_line(tmp_path, capsys, transport):
    from fake_comfyui import PROMPT_ID, FakeComfyUI

    with FakeComfyUI("never") as server:
        assert _cli(server.url, tmp_path, "--timeout", "1.5") == 1
    assert f"prompt {PROMPT_ID} did not finish within 1.5 s (--timeout)" in _error_line(capsys)


def test_a_server_that_dies_mid_run_is_one_line(tmp_path, capsys, transport):
    from fake_comfyui import PROMPT_ID, FakeComfyUI

    with FakeComfyUI("die") as server:
        assert _cli(server.url, tmp_path) == 1
    line = _error_line(capsys)
    assert f"before prompt {PROMPT_ID} finished" in line and "did the server stop?" in line
    assert not list(tmp_path.iterdir()), "nothing written"
