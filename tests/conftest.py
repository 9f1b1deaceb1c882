"""Shared pytest fixtures: where the reference data lives, and quiet, small JAX/TF."""
import os
import pathlib
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Generated data and trained vocabularies (embedded benchmark) go to a test-only cache.
os.environ.setdefault("DSS_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "dss_jax_test_cache"))

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _shared_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DSS_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The read-only ../shared folder (DSS_SHARED_DIR); skip when it is absent."""
    d = _shared_dir()
    if not d.is_dir():
        pytest.skip(f"reference folder {d} not found (set DSS_SHARED_DIR)")
    return d


@pytest.fixture(scope="session")
def dss_data_dir(shared_dir) -> pathlib.Path:
    """The paper's datasets.zip layout (DSS_DATA_DIR, default ../shared/dss_datasets)."""
    d = pathlib.Path(os.environ.get("DSS_DATA_DIR", shared_dir / "dss_datasets"))
    if not d.is_dir():
        pytest.skip(f"dataset folder {d} not found (set DSS_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def bench_spm_model(shared_dir) -> pathlib.Path:
    """The benchmark protocol's 8k SentencePiece model."""
    p = shared_dir / "bench" / "spm8k.model"
    if not p.is_file():
        pytest.skip(f"{p} not found")
    return p


def pytest_configure(config):
    """The reliability suite's count ("N cases tried, M handled cleanly") is printed at the end."""
    import reliability_report

    reliability_report.register(config)
