"""A local OpenAI-compatible server for tests: deterministic replies, injectable failures."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StubServer:
    """Serves /v1/models and /v1/chat/completions on 127.0.0.1; the first ``fail_first``
    completion requests get HTTP 503. Records every request's Authorization header."""

    def __init__(self, fail_first: int = 0, reply=None):
        self.fail_first, self.requests, self.auth = fail_first, 0, set()
        reply = reply or (lambda prompt, i: f"reply {i}: {prompt[:24]}")
        lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": "stub"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    stub.requests += 1
                    n = stub.requests
                    stub.auth.add(self.headers.get("Authorization"))
                if n <= stub.fail_first:
                    return self._send(503, {"error": "overloaded"})
                prompt = payload["messages"][-1]["content"]
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
