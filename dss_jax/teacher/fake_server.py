"""A fake OpenAI-compatible teacher server on 127.0.0.1, for tests and offline dry runs.

It answers `POST /v1/completions` and `POST /v1/chat/completions` with a completion that a
caller-supplied function derives deterministically from the prompt's last block (the
query), so a test can check that every row got the answer meant for it. A fault plan can
make it misbehave on purpose, per query and attempt: HTTP 500, 429 with Retry-After,
answers slower than the client's timeout, truncated or invalid JSON bodies, dropped connections,
or 401 when the expected API key is missing. Every request is logged (in memory and, if
asked, as JSON lines in a file): the query's hash, the attempt number and what was done.

It only ever binds to 127.0.0.1.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import time
from typing import Callable, List, Optional

# Fault names understood by the server.
FAULT_HTTP_500 = "http_500"
FAULT_HTTP_429 = "http_429"
FAULT_SLOW = "slow"
FAULT_TRUNCATED_JSON = "truncated_json"
FAULT_DROP_CONNECTION = "drop_connection"
FAULT_INVALID_JSON = "invalid_json"  # a complete 200 response whose body is not JSON
ALL_FAULTS = (
    FAULT_HTTP_500, FAULT_HTTP_429, FAULT_SLOW, FAULT_TRUNCATED_JSON, FAULT_DROP_CONNECTION, FAULT_INVALID_JSON,
)

FaultPlan = Callable[[str, int], Optional[str]]  # (query, attempt number from 1) -> fault or None


def query_of(prompt: str) -> str:
    """The last blank-line-separated block of a few-shot prompt: the row's own question."""
    return prompt.rstrip().rsplit("\n\n", 1)[-1]


def query_hash(prompt: str) -> str:
    return hashlib.sha256(query_of(prompt).encode("utf-8")).hexdigest()[:16]


def echo_completion(query: str) -> str:
    """Default answer: names the query's hash, so each row's completion is unique."""
    digest = hashlib.sha256(query.encode("utf-8")).hexdigest()[:12]
    return f" Reasoning about {digest}. So the answer is (a) {digest}."


@dataclasses.dataclass
class FakeServerConfig:
    completion_for_query: Callable[[str], str] = echo_completion
    fault_plan: FaultPlan = lambda query, attempt: None
    retry_after_header: str = "0"
    slow_s: float = 1.0
    response_delay_s: float = 0.0
    expected_api_key: Optional[str] = None
    log_path: Optional[str] = None


class FakeTeacherServer:
    """Start with `with FakeTeacherServer(config) as server:`; `server.base_url` ends in /v1."""

    def __init__(self, config: Optional[FakeServerConfig] = None):
        self.config = config or FakeServerConfig()
        self.requests: List[dict] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeTeacherServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeTeacherServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_snapshot(self) -> List[dict]:
        with self._lock:
            return list(self.requests)

    def _record(self, entry: dict, decide: Callable[[int], str]) -> str:
        """Log one request with its attempt number for this query and the outcome `decide` picks."""
        with self._lock:
            attempt = self._attempts.get(entry["query_hash"], 0) + 1
            self._attempts[entry["query_hash"]] = attempt
            entry["attempt"] = attempt
            entry["outcome"] = decide(attempt)
            self.requests.append(entry)
            if self.config.log_path:
                with open(self.config.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")
        return entry["outcome"]

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                chat = self.path.rstrip("/").endswith("/chat/completions")
                if not (chat or self.path.rstrip("/").endswith("/completions")):
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                request = json.loads(raw)
                prompt = request["messages"][-1]["content"] if chat else request["prompt"]
                query = query_of(prompt)
                authorization = self.headers.get("Authorization")
                entry = {
                    "time": time.time(),
                    "path": self.path,
                    "query_hash": query_hash(prompt),
                    "model": request.get("model"),
                    "temperature": request.get("temperature"),
                    "max_tokens": request.get("max_tokens"),
                    "stop": request.get("stop"),
                    "authorized": authorization is not None,
                }
                config = server.config
                if config.expected_api_key is not None and authorization != f"Bearer {config.expected_api_key}":
                    server._record(entry, lambda attempt: "http_401")
                    self._send_json(401, {"error": {"message": "invalid API key"}})
                    return
                outcome = server._record(entry, lambda attempt: config.fault_plan(query, attempt) or "ok")
                fault = None if outcome == "ok" else outcome
                if config.response_delay_s:
                    time.sleep(config.response_delay_s)
                if fault == FAULT_HTTP_500:
                    self._send_json(500, {"error": {"message": "internal error"}})
                elif fault == FAULT_HTTP_429:
                    self._send_json(429, {"error": {"message": "rate limited"}},
                                    {"Retry-After": config.retry_after_header})
                elif fault == FAULT_DROP_CONNECTION:
                    self.close_connection = True
                elif fault == FAULT_TRUNCATED_JSON:
                    body = json.dumps(self._answer(query, prompt, chat, request)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif fault == FAULT_INVALID_JSON:
                    self._send_raw(200, b'{"choices": [{"text": "cut')
                elif fault == FAULT_SLOW:
                    time.sleep(config.slow_s)
                    self._send_json(200, self._answer(query, prompt, chat, request))
                else:
                    self._send_json(200, self._answer(query, prompt, chat, request))

            def _answer(self, query: str, prompt: str, chat: bool, request: dict) -> dict:
                text = server.config.completion_for_query(query)
                choice = {"index": 0, "finish_reason": "stop"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                return {
                    "id": "fake",
                    "object": "chat.completion" if chat else "text_completion",
                    "model": request.get("model"),
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": len(prompt.split()),
                        "completion_tokens": len(text.split()),
                        "total_tokens": len(prompt.split()) + len(text.split()),
                    },
                }

            def _send_json(self, status: int, body: dict, headers: Optional[dict] = None):
                self._send_raw(status, json.dumps(body).encode(), headers)

            def _send_raw(self, status: int, data: bytes, headers: Optional[dict] = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up (e.g. its timeout fired first).
                    self.close_connection = True

        return Handler
