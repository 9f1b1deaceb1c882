"""Paths of run outputs that may be local or on cloud storage (``gs://bucket/...``).

A TPU pod's hosts share no disk, so MODEL_DIR is usually a bucket. ``etils.epath`` (the
path type orbax uses) reads and writes both; local paths are made absolute so that a run
keeps working after a ``chdir``.
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
    return epath.Path(pathlib.Path(path).absolute())
