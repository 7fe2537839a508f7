"""A stand-in for ComfyUI's HTTP and /ws API on loopback, for the queue client's tests: it answers as ComfyUI does,
or as something else, and ends a prompt the way a test asks (finished with outputs, never, or by going away)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_ID = "fake-prompt-1"
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class FakeComfyUI:
    """`ending`: "done" (progress, then the prompt ends with `outputs`), "never" (progress, then silence), "die" (progress,
    then the connection drops), "not_comfyui" (every route answers a web page)."""

    def __init__(self, ending: str = "done", outputs: dict[str, bytes] | None = None):
        self.ending, self.outputs = ending, outputs or {}
        self.prompted, self.stopping = threading.Event(), threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def history(self) -> dict:
        """Outputs as ComfyUI's history lists them: subfolder/filename keys become {filename, subfolder, type}."""
        images = [{"filename": key.rpartition("/")[2], "subfolder": key.rpartition("/")[0], "type": "output"}
                  for key in self.outputs]
        return {PROMPT_ID: {"outputs": {"9": {"images": images}}, "status": {"completed": True}}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                route = urllib.parse.urlparse(self.path)
                if fake.ending == "not_comfyui":
                    return self._send(200, b"<html><body>My photo gallery</body></html>", "text/html")
                if route.path == "/system_stats":
                    return self._send(200, json.dumps({"system": {"comfyui_version": "fake"}, "devices": []}).encode())
                if route.path == "/ws":
                    return self._websocket()
                if route.path == f"/history/{PROMPT_ID}":
                    if fake.ending == "die":
                        self.close_connection = True
                        return self.connection.shutdown(2)  # no answer at all
                    return self._send(200, json.dumps(fake.history() if fake.ending == "done" else {}).encode())
                if route.path == "/view":
                    query = dict(urllib.parse.parse_qsl(route.query))
                    key = "/".join(p for p in (query.get("subfolder"), query["filename"]) if p)
                    return self._send(200, fake.outputs[key], "image/png")
                self._send(404, b"404: Not Found", "text/plain")

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if fake.ending == "not_comfyui" or self.path != "/prompt":
                    return self._send(405, b"405: Method Not Allowed", "text/plain")
                fake.prompted.set()
                self._send(200, json.dumps({"prompt_id": PROMPT_ID, "number": 0, "node_errors": {}}).encode())

            def _websocket(self):
                accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + _WS_GUID).encode())
                                          .digest()).decode()
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept)
                self.end_headers()
                self.wfile.flush()
                self._frame({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}}})
                fake.prompted.wait(10)
                self._frame({"type": "progress", "data": {"prompt_id": PROMPT_ID, "node": "6", "value": 1, "max": 2}})
                if fake.ending == "done":
                    self._frame({"type": "executing", "data": {"prompt_id": PROMPT_ID, "node": None}})
                if fake.ending == "die":
                    self.connection.close()
                    return
                self._answer_close()

            def _answer_close(self):
                """Read the client's (masked) frames until its close frame, and answer it as a server does."""
                self.connection.settimeout(60)
                while not fake.stopping.is_set():
                    head = self.rfile.read(2)
                    if len(head) < 2:
                        return
                    length = head[1] & 0x7F
                    if length >= 126:
                        length = int.from_bytes(self.rfile.read(2 if length == 126 else 8), "big")
                    self.rfile.read(4 + length)  # mask and payload
                    if head[0] & 0x0F == 0x8:
                        self.wfile.write(bytes([0x88, 0]))
                        self.wfile.flush()
                        return

            def _frame(self, message: dict):
                payload = json.dumps(message).encode()
                header = bytes([0x81, len(payload)]) if len(payload) < 126 else struct.pack("!BBH", 0x81, 126,
                                                                                            len(payload))
                self.wfile.write(header + payload)
                self.wfile.flush()

        return Handler
