"""Paths that may be local or on cloud storage (``gs://bucket/...``): the one helper for them.

A TPU pod's hosts share no disk, so MODEL_DIR, initial checkpoints and vocabulary files
are often in a bucket. ``pathlib.Path`` breaks URLs (``Path("gs://b/x")`` is ``gs:/b/x``,
and ``is_file()`` of a URL is False), so every path that may be a URL goes through
``run_path``: an ``etils.epath.Path`` (the path type orbax uses) that reads and writes both.
Local paths are expanded (``~``) and made absolute so that a run keeps working after a
``chdir``.
"""
from __future__ import annotations

import os
import pathlib

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``gs://bucket/dir`` (no local disk behind them)."""
    return "://" in os.fspath(path)


def run_path(path: str | os.PathLike) -> epath.Path:
    """An ``epath.Path``: the URL as given, or the absolute local path."""
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return epath.Path(pathlib.Path(path).expanduser().absolute())
