"""HTTP client for OpenAI-compatible teacher LLM endpoints (vLLM, TGI, llama.cpp, hosted APIs).

Speaks `/v1/completions` (a raw few-shot prompt) and `/v1/chat/completions` (the prompt as
one user message), over the standard library's `http.client` (one kept-alive connection
per thread). Every request is retried with exponential backoff and full jitter on 429
(honouring `Retry-After`, in seconds or as an HTTP date), 408/409/425, 5xx, timeouts,
dropped connections and truncated or malformed bodies, up to a maximum number of retries;
after that a `TeacherRequestError` names the URL, the attempts and the last failure.

Every byte from the server is untrusted:
- each attempt has a total deadline (`timeout_s`) covering connect, send, headers and the
  whole body, enforced by a watchdog that shuts the socket down, so a server that trickles
  one byte a second, or an endless chunked body, cannot hold a request longer than that;
- a response larger than `max_response_bytes` (by its Content-Length or as it streams in) is
  refused at once and the row fails (`TeacherRequestError`, not retried, never stored);
- the body must be strict UTF-8 JSON (no NaN/Infinity) of the documented shape, with a text
  that is valid Unicode, a short `finish_reason` and non-negative integer token counts;
  anything else is a malformed answer (retried). Deeply nested or huge JSON is refused too.

The API key is held in a `Secret` whose repr is `***`. Every error and log message is passed
through `redact`, which removes the key in the forms a server could echo it (as is, any
letter case for keys of 12+ characters, URL- or JSON-escaped, hex, base64 or base32 at any
byte offset, reversed, and, for keys of 16+ characters, any 8-character piece of it); server
text in messages is further cut to printable ASCII. A completion or finish reason that
contains the key in any of those forms (pieces: 16 characters of a key of 24+) is refused
(the row fails, not retried), so the key never reaches the cache or the output.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import email.utils
import http.client
import json
import logging
import os
import random
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable, List, Mapping, Optional

LOGGER = logging.getLogger(__name__)

API_KEY_ENV_VARS = ("DSS_TEACHER_API_KEY", "OPENAI_API_KEY")
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20  # 1 MiB: a 256-token completion is a few KB
MAX_FINISH_REASON_CHARS = 64
MAX_TOKEN_COUNT = 2**31 - 1
MAX_DETAIL_CHARS = 200
_READ_CHUNK_BYTES = 65536
# Pieces of a long key that count as the key: (piece length, from key length) for refusing an
# answer, and shorter ones for scrubbing messages (a false match there only hides a few characters).
_REFUSE_PIECES = (16, 24)
_SCRUB_PIECES = (8, 16)
_REPEATED_STARS = re.compile(r"(?:\*\*\*)+")
_ANY_CASE_FROM_CHARS = 12


class TeacherRequestError(RuntimeError):
    """A request that failed for good: retries exhausted, a non-retryable HTTP status, or a refused answer."""


class Secret:
    """A string that never shows itself in repr/str (for API keys)."""

    __slots__ = ("_value", "_pattern", "_scrub_pattern")

    def __init__(self, value: str):
        self._value = value
        self._pattern = _secret_pattern(value, *_REFUSE_PIECES) if value else None
        self._scrub_pattern = _secret_pattern(value, *_SCRUB_PIECES) if value else None

    def reveal(self) -> str:
        return self._value

    def appears_in(self, text: str) -> bool:
        """True when `text` holds the key in any of the forms `redact` removes."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def scrub(self, text: str) -> str:
        if self._scrub_pattern is None:
            return text
        return _REPEATED_STARS.sub("***", self._scrub_pattern.sub("***", text))

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _base64_pieces(raw: bytes) -> List[str]:
    """The base64 characters that depend only on `raw`, for `raw` at each offset mod 3 in a longer text."""
    pieces = []
    for encode, group_bytes, group_chars in (
        (base64.b64encode, 3, 4), (base64.urlsafe_b64encode, 3, 4), (base64.b32encode, 5, 8),
    ):
        pieces.append(encode(raw).decode("ascii"))  # the key alone, padded
        for offset in range(group_bytes):
            encoded = encode(b"\0" * offset + raw).decode("ascii")
            skip = -(-offset * group_chars // group_bytes)  # characters that also encode the prefix
            end = (offset + len(raw)) // group_bytes * group_chars  # ... and those that may encode what follows
            pieces.append(encoded[skip:end])
    return pieces


def _secret_pattern(key: str, piece_chars: int, pieces_from_chars: int) -> "re.Pattern[str]":
    """One regex matching the key as a server might echo it (see the module docstring)."""
    raw = key.encode("utf-8")
    any_case = {
        key, key[::-1], urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key),
        json.dumps(key)[1:-1], json.dumps(key, ensure_ascii=False)[1:-1], raw.hex(),
        "".join(f"\\u{ord(c):04x}" for c in key),
    }
    if len(key) >= pieces_from_chars:
        any_case.update(key[i : i + piece_chars] for i in range(len(key) - piece_chars + 1))
    exact = {piece for piece in _base64_pieces(raw) if len(piece) >= min(8, len(key))}
    if len(key) < _ANY_CASE_FROM_CHARS:
        # A short key such as vLLM's customary "EMPTY" matched in any case would refuse ordinary words.
        exact |= any_case
        any_case = set()
    alternatives = [f"(?i:{re.escape(form)})" for form in sorted(any_case, key=len, reverse=True) if form]
    alternatives += [re.escape(form) for form in sorted(exact, key=len, reverse=True) if form]
    return re.compile("|".join(alternatives))


def redact(text: str, secret: Optional[Secret]) -> str:
    """Replace the secret in `text`, in every form a server could echo it, by `***`."""
    if secret is None or not secret.reveal():
        return text
    return secret.scrub(text)


def printable(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Server-supplied text made safe for a log line: printable ASCII only, at most `limit` characters."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[: limit * 4])
    return cleaned[:limit] + ("..." if len(cleaned) > limit else "")


def _validate_key(value: str, where: str) -> Secret:
    if not value:
        raise ValueError(f"{where}: the API key is empty")
    if not all("!" <= c <= "~" for c in value):
        # The key itself is never shown; it must fit in an HTTP header as is.
        raise ValueError(f"{where}: the API key holds spaces, control or non-ASCII characters; "
                         "expected one line of printable ASCII")
    return Secret(value)


def resolve_api_key(
    api_key_file: Optional[str] = None, environ: Optional[Mapping[str, str]] = None
) -> Optional[Secret]:
    """The API key from a file (first line) or from DSS_TEACHER_API_KEY / OPENAI_API_KEY.

    Returns None when none is set (local servers such as vLLM usually need no key).
    """
    if api_key_file:
        try:
            with open(api_key_file, encoding="utf-8") as f:
                value = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--api_key_file {api_key_file}: cannot read it ({type(e).__name__})") from None
        if not value:
            raise ValueError(f"API key file {api_key_file} is empty")
        return _validate_key(value, f"--api_key_file {api_key_file}")
    environ = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        value = environ.get(name, "").strip()
        if value:
            return _validate_key(value, f"${name}")
    return None


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings sent with every request (greedy by default)."""

    max_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        if len(self.stop) > 4:
            # The OpenAI API accepts at most 4 stop sequences.
            raise ValueError(f"at most 4 stop sequences are allowed, got {len(self.stop)}")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried (exponential backoff with full jitter)."""

    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0

    def backoff_s(self, retry_index: int, rng: random.Random) -> float:
        """Full-jitter backoff before retry number `retry_index` (0-based)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2.0**retry_index))
        return rng.uniform(0.0, ceiling)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One finished teacher completion with its token usage."""

    text: str
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    attempts: int


def parse_retry_after(value: Optional[str], now: Optional[datetime.datetime] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class _RetryableFailure(Exception):
    """Internal: one attempt failed in a way worth retrying."""

    def __init__(self, reason: str, retry_after_s: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class _TooLarge(Exception):
    """Internal: the response is larger than the cap."""


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _decode_json(content: bytes) -> object:
    """Strict UTF-8 JSON, or _RetryableFailure (never another exception, whatever the bytes)."""
    try:
        return json.loads(content.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _RetryableFailure("response body is not valid UTF-8") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise _RetryableFailure(f"invalid JSON in response ({type(e).__name__})") from None


def _token_count(usage: dict, name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:
        raise _RetryableFailure(f"usage.{name} is not a token count")
    return value


def _completion_from_body(body: object, chat: bool, attempts: int) -> Completion:
    """Extract text and usage from a decoded response body, or raise _RetryableFailure."""
    if not isinstance(body, dict):
        raise _RetryableFailure("response body is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _RetryableFailure("response has no choices")
    choice = choices[0]
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    if not isinstance(text, str):
        raise _RetryableFailure("response choice has no text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        raise _RetryableFailure("response text is not valid Unicode") from None
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and not (
        isinstance(finish_reason, str) and len(finish_reason) <= MAX_FINISH_REASON_CHARS
        and finish_reason.isascii() and finish_reason.isprintable()
    ):
        raise _RetryableFailure("response finish_reason is not a short string")
    usage = body.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise _RetryableFailure("response usage is not an object")
    return Completion(
        text=text,
        finish_reason=finish_reason,
        prompt_tokens=_token_count(usage, "prompt_tokens"),
        completion_tokens=_token_count(usage, "completion_tokens"),
        attempts=attempts,
    )


class _Watchdog:
    """Shuts a connection's socket down when an attempt's total deadline passes."""

    def __init__(self, connection: http.client.HTTPConnection, seconds: float):
        self._connection = connection
        self._lock = threading.Lock()
        self._stopped = False
        self.fired = False
        self._deadline = time.monotonic() + seconds
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining_s(self) -> float:
        """Seconds left; raises _RetryableFailure once the deadline has passed."""
        left = self._deadline - time.monotonic()
        if left <= 0 or self.fired:
            raise _RetryableFailure("deadline")
        return left

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            sock = self._connection.sock
            if sock is not None:
                try:  # the base-class shutdown also works on an SSL socket, and wakes a blocked recv
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> bool:
        """Disarm; True when the deadline had already fired."""
        with self._lock:
            self._stopped = True
            self._timer.cancel()
            return self.fired


def _idle_connection_is_usable(connection: http.client.HTTPConnection) -> bool:
    """A kept-alive socket that is readable while idle was closed by the server (or got junk)."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class TeacherClient:
    """Thread-safe client for one model behind an OpenAI-compatible base URL (e.g. `http://host:8000/v1`).

    `timeout_s` is the total time one attempt may take (connect, send, the whole answer);
    `complete` therefore ends within (max_retries + 1) * timeout_s plus the retry waits.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: Optional[Secret] = None,
        chat: bool = False,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
        seed: Optional[int] = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ):
        parts = urllib.parse.urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint must be an http(s) URL such as http://localhost:8000/v1")
        if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
            # Not repeated in the message: it may hold a credential.
            raise ValueError("endpoint must be a plain base URL, without user:password@, ?query or #fragment; "
                             "pass the key with --api_key_file or $DSS_TEACHER_API_KEY")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("endpoint has an invalid port") from None
        if not model:
            raise ValueError("a model name is required")
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not (isinstance(max_response_bytes, int) and max_response_bytes > 0):
            raise ValueError(f"max_response_bytes must be a positive integer, got {max_response_bytes!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.chat = chat
        self.timeout_s = float(timeout_s)
        self.retry = retry
        self.max_response_bytes = max_response_bytes
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, port
        self._path = parts.path.rstrip("/") + ("/chat/completions" if chat else "/completions")
        self._api_key = api_key
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"TeacherClient(base_url={self.base_url!r}, model={self.model!r}, chat={self.chat})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions" if self.chat else f"{self.base_url}/completions"

    def request_payload(self, prompt: str, generation: GenerationConfig) -> dict:
        """The JSON body sent for `prompt` (also what the cache key is derived from)."""
        payload: dict = {
            "model": self.model,
            "max_tokens": generation.max_tokens,
            "temperature": generation.temperature,
        }
        if generation.stop:
            payload["stop"] = list(generation.stop)
        if self.chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        return payload

    def complete(self, prompt: str, generation: GenerationConfig) -> Completion:
        """Send one prompt, retrying transient failures; raise TeacherRequestError when it cannot succeed."""
        body = json.dumps(self.request_payload(prompt, generation)).encode("utf-8")
        last_reason = "no attempt made"
        attempts = self.retry.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._checked(self._attempt(body, attempt + 1))
            except _RetryableFailure as failure:
                last_reason = self._redact(failure.reason)
                if attempt + 1 >= attempts:
                    break
                wait_s = self._wait_before_retry(attempt, failure.retry_after_s)
                LOGGER.warning(
                    "teacher request failed (%s); retry %d/%d in %.2fs",
                    last_reason, attempt + 1, self.retry.max_retries, wait_s,
                )
                self._sleep(wait_s)
        raise TeacherRequestError(
            self._redact(f"POST {self.url} failed after {attempts} attempts; last error: {last_reason}")
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._api_key)

    def _fail(self, reason: str) -> TeacherRequestError:
        return TeacherRequestError(self._redact(f"POST {self.url}: {reason}"))

    def _checked(self, completion: Completion) -> Completion:
        """Refuse an answer that carries the API key, so it never reaches the cache or the output files."""
        key = self._api_key
        if key is not None and key.reveal() and (
            key.appears_in(completion.text) or key.appears_in(completion.finish_reason or "")
        ):
            raise self._fail("the answer contains the API key (or text equal to a form of it); refused, not "
                             "stored. A server that echoes credentials is misconfigured; if your key is a "
                             "common word, use a long random key")
        return completion

    def _wait_before_retry(self, retry_index: int, retry_after_s: Optional[float]) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.retry.retry_after_max_s)
        with self._rng_lock:
            return self.retry.backoff_s(retry_index, self._rng)

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "dss_jax-teacher"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        return headers

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout_s, context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's kept-alive connection (and whether it is reused), or a new one."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is not None and _idle_connection_is_usable(connection):
            return connection, True
        if connection is not None:
            connection.close()
        connection = self._new_connection()
        self._local.connection = connection
        return connection, False

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def _attempt(self, body: bytes, attempt_number: int) -> Completion:
        """One POST under one total deadline; the decoded answer, or _RetryableFailure/TeacherRequestError."""
        connection, reused = self._connection()
        watchdog = _Watchdog(connection, self.timeout_s)
        keep = False
        try:
            status, retry_after, content, keep = self._exchange(connection, reused, watchdog, body)
        except _TooLarge:
            raise self._fail(f"the answer is larger than max_response_bytes={self.max_response_bytes}; "
                             "refused, not stored (raise --max_response_bytes if it is genuine)") from None
        except _RetryableFailure as failure:
            if watchdog.fired or failure.reason == "deadline":
                raise _RetryableFailure(f"no complete answer within the total deadline of {self.timeout_s:g}s")
            raise
        finally:
            if watchdog.stop() or not keep:
                self._drop_connection()
        return self._interpret(status, retry_after, content, attempt_number)

    def _exchange(
        self, connection: http.client.HTTPConnection, reused: bool, watchdog: _Watchdog, body: bytes
    ) -> tuple[int, Optional[str], bytes, bool]:
        """Send the request and read the whole (capped) response: (status, Retry-After, body, keep-alive)."""
        for retry_fresh in (reused, False):
            try:
                if connection.sock is None:
                    connection.timeout = watchdog.remaining_s()
                    connection.connect()
                connection.sock.settimeout(watchdog.remaining_s())
                connection.request("POST", self._path, body=body, headers=self._headers())
                response = connection.getresponse()
                break
            except _RetryableFailure:
                raise
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                if retry_fresh and not watchdog.fired:
                    # The server closed the kept-alive connection as we reused it: one fresh try, same deadline.
                    connection.close()
                    continue
                raise _RetryableFailure(f"connection failed: {type(e).__name__}") from None
            except socket.timeout:
                raise _RetryableFailure("deadline") from None
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise _RetryableFailure(f"connection failed: {type(e).__name__}") from None
        try:
            content = self._read_body(response, connection, watchdog)
        except socket.timeout:
            raise _RetryableFailure("deadline") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise _RetryableFailure(f"connection failed while reading the answer: {type(e).__name__}") from None
        if watchdog.fired:
            raise _RetryableFailure("deadline")
        return response.status, response.getheader("Retry-After"), content, not response.will_close

    def _read_body(
        self, response: http.client.HTTPResponse, connection: http.client.HTTPConnection, watchdog: _Watchdog
    ) -> bytes:
        """The whole body, at most max_response_bytes, read piece by piece under the deadline."""
        limit = self.max_response_bytes
        if response.length is not None and response.length > limit:
            raise _TooLarge()
        chunks, total = [], 0
        while True:
            connection.sock.settimeout(watchdog.remaining_s())
            chunk = response.read1(_READ_CHUNK_BYTES)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise _TooLarge()
            chunks.append(chunk)
        if watchdog.fired:
            raise _RetryableFailure("deadline")
        if not response.chunked and response.length:
            raise _RetryableFailure(f"truncated answer: {response.length} bytes missing")
        response.close()
        return b"".join(chunks)

    def _interpret(self, status: int, retry_after: Optional[str], content: bytes, attempt_number: int) -> Completion:
        if status in RETRYABLE_STATUS or status >= 500:
            raise _RetryableFailure(f"HTTP {status}", parse_retry_after(retry_after))
        if status >= 300 or status < 200:
            detail = printable(self._redact(content[:1000].decode("utf-8", errors="replace")))
            what = "redirects are not followed; give the final URL as the endpoint" if status < 400 else "not retried"
            raise self._fail(f"returned HTTP {status} ({what}): {detail}")
        return _completion_from_body(_decode_json(content), self.chat, attempt_number)
