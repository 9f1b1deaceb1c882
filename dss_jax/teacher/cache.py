"""On-disk cache of teacher completions, keyed by (benchmark, split, row index, request hash).

A stdlib sqlite database in WAL mode; every completion is committed as soon as it
arrives, so a run that is killed (even with SIGKILL) loses at most the requests that were
in flight, and a rerun asks the teacher only for rows that are not in the cache. The
request hash covers everything that determines the completion (prompt text, model,
chat/completions mode, sampling settings), so editing a prompt file or switching model
invalidates exactly the affected rows. The cache never stores the API key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
from typing import Iterable, Optional

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    benchmark TEXT NOT NULL,
    split TEXT NOT NULL,
    row_index INTEGER NOT NULL,
    request_hash TEXT NOT NULL,
    completion TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    created_unix REAL NOT NULL,
    PRIMARY KEY (benchmark, split, row_index, request_hash)
)
"""


def request_hash(payload: dict) -> str:
    """Stable sha256 of a request payload (prompt/messages, model, sampling settings)."""
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class CachedCompletion:
    """One cached answer of the teacher for one row."""

    row_index: int
    completion: str
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class CompletionCache:
    """sqlite-backed completion store; use from one thread (the runner's main thread)."""

    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        if not os.path.exists(path):
            # sqlite would create it 0o644 whatever the umask; made here it gets the user's normal
            # permissions (0o666 minus the umask), which sqlite then gives its -wal and -shm files too.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666))
        self._db = sqlite3.connect(path, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "CompletionCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def put(
        self,
        benchmark: str,
        split: str,
        row_index: int,
        request_hash_: str,
        completion: str,
        finish_reason: Optional[str],
        prompt_tokens: int,
        completion_tokens: int,
        attempts: int,
        created_unix: float,
    ) -> None:
        """Store one completion and commit immediately (a later identical key is ignored)."""
        self._db.execute(
            "INSERT OR IGNORE INTO completions VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                benchmark, split, row_index, request_hash_, completion, finish_reason,
                prompt_tokens, completion_tokens, attempts, created_unix,
            ),
        )
        self._db.commit()

    def lookup(
        self, benchmark: str, split: str, keys: Iterable[tuple[int, str]]
    ) -> dict[int, CachedCompletion]:
        """The cached completions among (row_index, request_hash) keys, by row index."""
        wanted = dict(keys)
        found: dict[int, CachedCompletion] = {}
        cursor = self._db.execute(
            "SELECT row_index, request_hash, completion, finish_reason, prompt_tokens,"
            " completion_tokens, attempts FROM completions WHERE benchmark=? AND split=?",
            (benchmark, split),
        )
        for row_index, hash_, completion, finish, p_tok, c_tok, attempts in cursor:
            if wanted.get(row_index) == hash_:
                found[row_index] = CachedCompletion(row_index, completion, finish, p_tok, c_tok, attempts)
        return found

    def count(self, benchmark: Optional[str] = None, split: Optional[str] = None) -> int:
        """Number of cached completions (optionally of one benchmark/split)."""
        query, args = "SELECT COUNT(*) FROM completions", []
        conditions = []
        if benchmark is not None:
            conditions.append("benchmark=?")
            args.append(benchmark)
        if split is not None:
            conditions.append("split=?")
            args.append(split)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        return int(self._db.execute(query, args).fetchone()[0])
