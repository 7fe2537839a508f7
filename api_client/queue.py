"""Talking to ComfyUI's server: POST /prompt, follow /ws, read /history, download through /view.

Every way a run can end early is a `ClientError` whose message is one line for the user: a refused prompt or a
failed node (`PromptError`, with ComfyUI's node errors), no server or not a ComfyUI server, a prompt that did not
finish in time, a server that went away mid-run (`ServerError`).
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable

REQUEST_TIMEOUT = 60  # seconds for one HTTP request; the prompt's own limit is the caller's


class ClientError(RuntimeError):
    """A run that cannot go on; the message says why in a line."""


class PromptError(ClientError):
    """The server refused the prompt or a node failed; the message carries ComfyUI's node errors."""


class ServerError(ClientError):
    """No ComfyUI answering at the address, an answer no ComfyUI gives, a timeout, or the server went away."""


def _request(url: str, body: dict | None = None, timeout: float = REQUEST_TIMEOUT) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        raise PromptError(f"{e.code} from {url}: {_describe_refusal(detail)}") from e
    except urllib.error.URLError as e:
        raise ServerError(f"cannot reach {url}: {_reason(e.reason)}") from e
    except TimeoutError as e:
        raise ServerError(f"{url} did not answer within {timeout:g} s") from e
    except ConnectionError as e:
        raise ServerError(f"the server closed the connection during {url} ({_reason(e)}); did it stop?") from e
    except http.client.HTTPException as e:
        raise ServerError(f"{url} gave no valid HTTP answer ({type(e).__name__}); is this a ComfyUI server?") from e


def _reason(error) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _json(raw: bytes, what: str) -> dict:
    try:
        answer = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        answer = None
    if not isinstance(answer, dict):
        raise ServerError(f"{what} answered {_excerpt(raw)}, not ComfyUI's JSON; is this a ComfyUI server?")
    return answer


def _excerpt(raw: bytes) -> str:
    text = " ".join(raw.decode(errors="replace").split())
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _describe_refusal(detail: str) -> str:
    try:
        answer = json.loads(detail)
    except json.JSONDecodeError:
        return detail
    if not isinstance(answer, dict):
        return detail
    lines = [answer.get("error", {}).get("message", "")]
    for node_id, node in answer.get("node_errors", {}).items():
        for error in node.get("errors", []):
            lines.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "\n".join(line for line in lines if line)


def check_server(server: str) -> None:
    """ServerError unless `server` answers GET /system_stats as ComfyUI does."""
    try:
        stats = _json(_request(f"{server}/system_stats"), f"{server}/system_stats")
    except PromptError as e:  # an HTTP error status: something else listens there
        raise ServerError(f"{server} is not a ComfyUI server: {e}") from e
    if not isinstance(stats.get("system"), dict) or "devices" not in stats:
        raise ServerError(f"{server} is not a ComfyUI server: /system_stats has no 'system' and 'devices'")


def submit(server: str, graph: dict, client_id: str) -> str:
    answer = _json(_request(f"{server}/prompt", {"prompt": graph, "client_id": client_id}), f"{server}/prompt")
    if "prompt_id" not in answer:
        raise ServerError(f"{server}/prompt answered without a prompt_id: {_excerpt(json.dumps(answer).encode())}")
    return answer["prompt_id"]


def follow(server: str, graph: dict, on_progress: Callable[[str, int, int], None], timeout: float) -> str:
    """Submit and wait until the prompt ends; returns its id. PromptError on a node error or an interrupt,
    ServerError when the server is not ComfyUI, goes away, or the prompt is not done within `timeout` seconds.

    Progress comes from /ws with websocket-client; without it, /history is polled (no progress)."""
    check_server(server)
    try:
        import websocket
    except ImportError:
        return _follow_history(server, graph, timeout)
    deadline = time.monotonic() + timeout
    client_id = uuid.uuid4().hex
    try:
        ws = websocket.create_connection(f"ws{server[4:]}/ws?clientId={client_id}",
                                         timeout=min(timeout, REQUEST_TIMEOUT))
    except (websocket.WebSocketException, OSError) as e:
        raise ServerError(f"{server}/ws: cannot open ComfyUI's progress socket ({_reason(e)})") from e
    try:
        prompt_id = submit(server, graph, client_id)
        while True:
            message = _receive(ws, deadline, server, prompt_id, timeout)
            data = message.get("data") or {}
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue
            kind = message.get("type")
            _raise_on_failure(kind, data)
            if kind == "progress":
                on_progress(str(data.get("node")), int(data.get("value", 0)), int(data.get("max", 1)))
            elif kind == "executing" and data.get("node") is None:
                return prompt_id
    finally:
        ws.close()


def _raise_on_failure(kind: str | None, data: dict) -> None:
    if kind == "execution_error":
        raise PromptError(f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                          f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}")
    if kind == "execution_interrupted":
        raise PromptError("the prompt was interrupted")


def _timed_out(prompt_id: str, timeout: float, server: str) -> ServerError:
    return ServerError(f"prompt {prompt_id} did not finish within {timeout:g} s (--timeout); it is still in ComfyUI's "
                       f"queue at {server}")


def _lost(server: str, prompt_id: str, why: str) -> ServerError:
    return ServerError(f"the connection to ComfyUI at {server} was lost before prompt {prompt_id} finished ({why}); "
                       "did the server stop?")


def _follow_history(server: str, graph: dict, timeout: float) -> str:
    """Submit, then read /history/<id> until the prompt is there (ComfyUI adds it when the prompt has ended)."""
    deadline = time.monotonic() + timeout
    prompt_id = submit(server, graph, uuid.uuid4().hex)
    while True:
        try:
            entry = _json(_request(f"{server}/history/{prompt_id}"), f"{server}/history").get(prompt_id)
        except ServerError as e:
            raise _lost(server, prompt_id, str(e)) from e
        if isinstance(entry, dict):
            for message in (entry.get("status") or {}).get("messages", []):
                if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
                    _raise_on_failure(message[0], message[1])
            return prompt_id
        if time.monotonic() >= deadline:
            raise _timed_out(prompt_id, timeout, server)
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _receive(ws, deadline: float, server: str, prompt_id: str, timeout: float) -> dict:
    """The next JSON message of the socket (binary preview frames skipped)."""
    import websocket

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(prompt_id, timeout, server)
        ws.settimeout(remaining)
        try:
            raw = ws.recv()
        except (websocket.WebSocketTimeoutException, TimeoutError):
            continue  # the deadline check above ends it
        except (websocket.WebSocketException, OSError) as e:
            raise _lost(server, prompt_id, _reason(e)) from e
        if isinstance(raw, bytes):
            continue
        if not raw:  # a close frame
            raise _lost(server, prompt_id, "the server closed the socket")
        return _json(raw.encode(), f"{server}/ws")


def output_files(server: str, prompt_id: str) -> list[dict]:
    """Every file the prompt's output nodes reported ({filename, subfolder, type})."""
    history = _json(_request(f"{server}/history/{prompt_id}"), f"{server}/history")
    if prompt_id not in history:
        raise ServerError(f"{server} has no history of prompt {prompt_id} (was the server restarted?)")
    files = []
    for output in history[prompt_id].get("outputs", {}).values():
        for key in ("images", "gifs", "videos", "audio"):
            files += [f for f in output.get(key, []) if isinstance(f, dict) and "filename" in f]
    return files


def fetch(server: str, item: dict) -> bytes:
    """An output's bytes through /view."""
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    return _request(f"{server}/view?{query}")
