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
import secrets

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``gs://bucket/dir`` (no local disk behind them)."""
    return "://" in os.fspath(path)


def run_path(path: str | os.PathLike) -> epath.Path:
    """An ``epath.Path``: the URL as given, or the absolute local path."""
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return epath.Path(pathlib.Path(path).expanduser().absolute())


def _create_exclusive(folder: pathlib.Path, name: str) -> tuple[int, str]:
    """A new temp file in `folder`, created 0o666 minus the umask (mkstemp would force 0o600)."""
    for _ in range(100):
        tmp = str(folder / f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {folder / name}")


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that readers see the old file or the new one, never a part.

    Locally: a temp file in the same folder, fsync, rename over `path`; the file gets the
    user's normal permissions (0o666 minus the umask). On cloud storage objects are
    replaced whole, so the text is written directly.
    """
    if is_remote(path):
        epath.Path(os.fspath(path)).write_text(text)
        return
    path = pathlib.Path(os.fspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_exclusive(path.parent, path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
