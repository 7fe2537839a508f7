"""Talking to ComfyUI's server: POST /prompt, follow /ws, read /history, download through /view."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable


class PromptError(RuntimeError):
    """The server refused the prompt or a node failed; the message carries ComfyUI's node errors."""


def _request(url: str, body: dict | None = None, timeout: float = 60):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise PromptError(f"{e.code} from {url}: {_describe_refusal(detail)}") from e


def _describe_refusal(detail: str) -> str:
    try:
        answer = json.loads(detail)
    except json.JSONDecodeError:
        return detail
    lines = [answer.get("error", {}).get("message", "")]
    for node_id, node in answer.get("node_errors", {}).items():
        for error in node.get("errors", []):
            lines.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(line for line in lines if line)


def submit(server: str, graph: dict, client_id: str) -> str:
    answer = json.loads(_request(f"{server}/prompt", {"prompt": graph, "client_id": client_id}))
    return answer["prompt_id"]


def follow(server: str, graph: dict, on_progress: Callable[[str, int, int], None], timeout: float) -> str:
    """Submit and wait on /ws until the prompt ends; returns its id, raises PromptError on a node error."""
    import websocket

    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws{server[4:]}/ws?clientId={client_id}", timeout=timeout)
    try:
        prompt_id = submit(server, graph, client_id)
        while True:
            raw = ws.recv()
            if isinstance(raw, bytes):
                continue
            message = json.loads(raw)
            data = message.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if message["type"] == "progress":
                on_progress(data["node"], data["value"], data["max"])
            elif message["type"] == "execution_error":
                raise PromptError(f"node {data['node_id']} ({data['node_type']}) failed: "
                                  f"{data['exception_type']}: {data['exception_message'].strip()}")
            elif message["type"] == "execution_interrupted":
                raise PromptError("the prompt was interrupted")
            elif message["type"] == "executing" and data["node"] is None:
                return prompt_id
    finally:
        ws.close()


def output_files(server: str, prompt_id: str) -> list[dict]:
    """Every file the prompt's output nodes reported ({filename, subfolder, type})."""
    history = json.loads(_request(f"{server}/history/{prompt_id}"))[prompt_id]
    files = []
    for output in history["outputs"].values():
        for key in ("images", "gifs", "videos", "audio"):
            files += [f for f in output.get(key, []) if isinstance(f, dict) and "filename" in f]
    return files


def download(server: str, item: dict, directory: str) -> str:
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, os.path.basename(item["filename"]))
    with open(path, "wb") as f:
        f.write(_request(f"{server}/view?{query}"))
    return path
