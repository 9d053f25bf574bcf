"""A local OpenAI-compatible server for tests: deterministic replies, injectable failures."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    """Serves /v1/models and /v1/chat/completions on 127.0.0.1. The first ``fail_first`` completion
    requests get HTTP ``fail_status`` (with ``Retry-After: retry_after`` when given), and so does every
    request after the first ``fail_after`` (an endpoint that dies); a request whose
    last message contains ``bad_marker`` gets HTTP 400 with an error message. Records every request's
    Authorization header and the time of every completion request."""

    def __init__(
        self,
        fail_first: int = 0,
        reply=None,
        fail_status: int = 503,
        retry_after: str | None = None,
        bad_marker: str | None = None,
        fail_after: int | None = None,
    ):
        self.fail_first, self.fail_after, self.requests, self.auth, self.times = fail_first, fail_after, 0, set(), []
        reply = reply or (lambda prompt, i: f"reply {i}: {prompt[:24]}")
        lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "stub"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = payload["messages"][-1]["content"]
                with lock:
                    stub.requests += 1
                    n = stub.requests
                    stub.auth.add(self.headers.get("Authorization"))
                    stub.times.append(time.time())
                if n <= stub.fail_first or (stub.fail_after is not None and n > stub.fail_after):
                    headers = {"Retry-After": retry_after} if retry_after else None
                    return self._send(fail_status, {"error": {"message": "overloaded"}}, headers)
                if bad_marker and bad_marker in prompt:
                    return self._send(400, {"error": {"message": f"this prompt is not allowed: {bad_marker}"}})
                choices = [
                    {
                        "index": i,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": reply(prompt, i)},
                        "logprobs": {"content": [{"logprob": -0.25}, {"logprob": -0.75}]},
                    }
                    for i in range(payload.get("n", 1))
                ]
                self._send(200, {"choices": choices, "usage": {"completion_tokens": 2 * len(choices)}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
