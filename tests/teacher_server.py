"""Test-only fake OpenAI-compatible teacher server on 127.0.0.1 (moved out of the library).

It answers `POST /v1/completions` and `POST /v1/chat/completions` with a completion that a
caller-supplied function derives deterministically from the prompt's last block (the
query), so a test can check that every row got the answer meant for it. A fault plan can
make it misbehave on purpose, per query and attempt: HTTP 500, 429 with Retry-After,
answers slower than the client's timeout, truncated or invalid JSON bodies, dropped
connections, 401 when the expected API key is missing, and hostile answers (a body that
trickles in under a huge Content-Length, a slow endless chunked body, headers that trickle,
oversized answers, the Authorization header echoed back in an error or in the completion,
non-UTF-8 bytes, wrong types, deeply nested JSON, lone surrogates, huge token counts).
Every request is logged (in memory and, if asked, as JSON lines in a file): the query's
hash, the attempt number and what was done; never the Authorization header itself.

It only ever binds to 127.0.0.1, and every slow loop ends by itself (after
`trickle_max_s`, when the client goes away, or when the server stops).
"""
from __future__ import annotations

import base64
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
# Hostile answers (issue 17 item 8): the client must end, refuse or retry, never hang or store them.
FAULT_TRICKLE_BODY = "trickle_body"  # 200, a huge Content-Length, then one byte per trickle_interval_s
FAULT_SLOW_CHUNKED = "slow_chunked"  # 200, chunked, an endless run of 1-byte chunks
FAULT_TRICKLE_HEADERS = "trickle_headers"  # the status line and headers one byte at a time, forever
FAULT_HUGE_ANSWER = "huge_answer"  # a valid answer whose text is huge_bytes long (with Content-Length)
FAULT_HUGE_CHUNKED = "huge_chunked"  # the same, chunked, so no length is announced
FAULT_ECHO_KEY_IN_ERROR = "echo_key_in_error"  # 400 whose body echoes the Authorization header, plain and base64
FAULT_ECHO_KEY_IN_TEXT = "echo_key_in_text"  # 200 whose completion text holds the Authorization header
FAULT_NON_UTF8 = "non_utf8"  # 200 whose body has bytes that are not UTF-8
FAULT_WRONG_TYPES = "wrong_types"  # usage.prompt_tokens is a string, finish_reason a list
FAULT_DEEP_JSON = "deep_json"  # 200 whose body is 100 000 nested JSON arrays
FAULT_LONE_SURROGATE = "lone_surrogate"  # the text is "\\ud800": valid JSON, not valid Unicode
FAULT_HUGE_TOKEN_COUNT = "huge_token_count"  # usage.prompt_tokens = 10**30
FAULT_NAN_JSON = "nan_json"  # usage.prompt_tokens = NaN (not JSON, though Python's json reads it)
FAULT_HUGE_HEADER = "huge_header"  # a 200 with a 100 kB header line
HOSTILE_FAULTS = (
    FAULT_TRICKLE_BODY, FAULT_SLOW_CHUNKED, FAULT_TRICKLE_HEADERS, FAULT_HUGE_ANSWER, FAULT_HUGE_CHUNKED,
    FAULT_ECHO_KEY_IN_ERROR, FAULT_ECHO_KEY_IN_TEXT, FAULT_NON_UTF8, FAULT_WRONG_TYPES, FAULT_DEEP_JSON,
    FAULT_LONE_SURROGATE, FAULT_HUGE_TOKEN_COUNT, FAULT_NAN_JSON, FAULT_HUGE_HEADER,
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
    trickle_interval_s: float = 0.05
    trickle_max_s: float = 20.0  # every slow loop stops by itself after this long
    trickle_content_length: int = 10**9  # what FAULT_TRICKLE_BODY announces
    huge_bytes: int = 3 << 20


class FakeTeacherServer:
    """Start with `with FakeTeacherServer(config) as server:`; `server.base_url` ends in /v1."""

    def __init__(self, config: Optional[FakeServerConfig] = None):
        self.config = config or FakeServerConfig()
        self.requests: List[dict] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._stopping = threading.Event()
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
        self._stopping.set()
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
                    "client_port": self.client_address[1],
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
                elif fault in HOSTILE_FAULTS:
                    try:
                        self._hostile(fault, self._answer(query, prompt, chat, request), chat, authorization or "")
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True  # the client gave up, as it should
                else:
                    self._send_json(200, self._answer(query, prompt, chat, request))

            def _trickle(self, data: bytes) -> None:
                """Write `data` one byte per trickle interval, endlessly repeated, until a bound stops it."""
                config = server.config
                stop_at = time.monotonic() + config.trickle_max_s
                position = 0
                while time.monotonic() < stop_at and not server._stopping.is_set():
                    self.wfile.write(data[position % len(data) : position % len(data) + 1])
                    self.wfile.flush()
                    position += 1
                    time.sleep(config.trickle_interval_s)
                self.close_connection = True

            def _with_text(self, answer: dict, chat: bool, text: str) -> dict:
                choice = answer["choices"][0]
                if chat:
                    choice["message"]["content"] = text
                else:
                    choice["text"] = text
                return answer

            def _hostile(self, fault: str, answer: dict, chat: bool, authorization: str) -> None:
                config = server.config
                if fault == FAULT_TRICKLE_BODY:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(config.trickle_content_length))
                    self.end_headers()
                    self._trickle(json.dumps(answer).encode())
                elif fault == FAULT_SLOW_CHUNKED:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"1\r\n[\r\n")
                    self._trickle(b"1\r\n \r\n")
                elif fault == FAULT_TRICKLE_HEADERS:
                    self._trickle(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 50)
                elif fault == FAULT_HUGE_ANSWER:
                    self._send_json(200, self._with_text(answer, chat, "x" * config.huge_bytes))
                elif fault == FAULT_HUGE_CHUNKED:
                    data = json.dumps(self._with_text(answer, chat, "x" * config.huge_bytes)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(data), 65536):
                        piece = data[start : start + 65536]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                elif fault == FAULT_ECHO_KEY_IN_ERROR:
                    echoed = {"message": f"bad request; you sent Authorization: {authorization}",
                              "base64": base64.b64encode(f"Authorization: {authorization}".encode()).decode(),
                              "headers": dict(self.headers)}
                    self._send_json(400, {"error": echoed})
                elif fault == FAULT_ECHO_KEY_IN_TEXT:
                    self._send_json(200, self._with_text(answer, chat, f" Your header was {authorization}."))
                elif fault == FAULT_NON_UTF8:
                    self._send_raw(200, b'{"choices": [{"text": "\xff\xfe\xc3(", "finish_reason": "stop"}]}')
                elif fault == FAULT_WRONG_TYPES:
                    answer["usage"]["prompt_tokens"] = "lots"
                    answer["choices"][0]["finish_reason"] = ["stop"] * 3
                    self._send_json(200, answer)
                elif fault == FAULT_DEEP_JSON:
                    self._send_raw(200, b"[" * 100_000 + b"]" * 100_000)
                elif fault == FAULT_LONE_SURROGATE:
                    self._send_json(200, self._with_text(answer, chat, "a\ud800b"))
                elif fault == FAULT_HUGE_TOKEN_COUNT:
                    answer["usage"]["prompt_tokens"] = 10**30
                    self._send_json(200, answer)
                elif fault == FAULT_NAN_JSON:
                    answer["usage"]["prompt_tokens"] = float("nan")
                    self._send_json(200, answer)  # json.dumps writes NaN
                elif fault == FAULT_HUGE_HEADER:
                    self._send_json(200, answer, {"X-Huge": "h" * 100_000})

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
