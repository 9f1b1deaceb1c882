"""Fetching the paper's `datasets.zip` into a local cache, with a sha256 checksum.

`python -m dss_jax.data fetch --yes [--sha256 HEX] [--cache_dir DIR]` downloads
`DATASETS_ZIP_URL` (about the size of the paper's data; needs network), checks its
sha256, and unpacks it to `<cache>/datasets/` (use that folder as DSS_DATA_DIR).
Without `--sha256` the first download's checksum is recorded next to the zip and every
later use is checked against it. Nothing is downloaded without `--yes`.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zipfile
from typing import Optional

DATASETS_ZIP_URL = (
    "https://github.com/google-research/distilling-step-by-step/raw/main/datasets.zip"
)
CACHE_DIR_ENV = "DSS_CACHE_DIR"
BENCHMARK_FOLDERS = ("cqa", "esnli", "anli1", "svamp")


class ChecksumMismatchError(RuntimeError):
    """The downloaded archive is not the one expected."""


def cache_dir(explicit: Optional[os.PathLike] = None) -> pathlib.Path:
    """$DSS_CACHE_DIR, else ~/.cache/dss_jax (or the explicit folder)."""
    if explicit is not None:
        return pathlib.Path(explicit).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "dss_jax"


def sha256_of_file(path: os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: os.PathLike, expected_sha256: str) -> None:
    actual = sha256_of_file(path)
    if actual != expected_sha256.lower():
        raise ChecksumMismatchError(
            f"{path}: sha256 {actual} but expected {expected_sha256}; delete the file and fetch again"
        )


def _safe_members(archive: zipfile.ZipFile, destination: pathlib.Path):
    root = destination.resolve()
    for member in archive.infolist():
        target = (destination / member.filename).resolve()
        if root != target and root not in target.parents:
            raise ValueError(f"zip member {member.filename!r} would be written outside {destination}")
        yield member


def _find_layout_root(unpacked: pathlib.Path) -> pathlib.Path:
    """The folder that holds cqa/, svamp/, ... (the zip may wrap them in `datasets/`)."""
    for candidate in [unpacked, *sorted(p for p in unpacked.iterdir() if p.is_dir())]:
        if any((candidate / name).is_dir() for name in BENCHMARK_FOLDERS):
            return candidate
    raise ValueError(f"{unpacked} holds none of the benchmark folders {BENCHMARK_FOLDERS}")


def unpack_datasets_zip(zip_path: os.PathLike, destination: os.PathLike, expected_sha256: Optional[str]) -> pathlib.Path:
    """Checks `zip_path` (if a checksum is given) and unpacks it; returns the data dir."""
    if expected_sha256:
        verify_checksum(zip_path, expected_sha256)
    destination = pathlib.Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=".unpack-", dir=destination.parent))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(staging, members=list(_safe_members(archive, staging)))
        root = _find_layout_root(staging)
        if destination.exists():
            shutil.rmtree(destination)
        shutil.move(str(root), str(destination))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def download(url: str, target: pathlib.Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".partial")
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
        shutil.copyfileobj(response, handle)
    os.replace(partial, target)


def fetch_datasets(
    expected_sha256: Optional[str] = None,
    cache: Optional[os.PathLike] = None,
    url: str = DATASETS_ZIP_URL,
    downloader=download,
) -> pathlib.Path:
    """Downloads (once) and unpacks datasets.zip under the cache; returns the data dir."""
    folder = cache_dir(cache)
    zip_path = folder / "datasets.zip"
    recorded = folder / "datasets.zip.sha256"
    if not zip_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        downloader(url, zip_path)
    if expected_sha256 is None and recorded.is_file():
        expected_sha256 = recorded.read_text().strip()
    if expected_sha256 is None:
        recorded.write_text(sha256_of_file(zip_path) + "\n")
    return unpack_datasets_zip(zip_path, folder / "datasets", expected_sha256)
