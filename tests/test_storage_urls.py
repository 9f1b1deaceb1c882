"""`storage.run_path` keeps URLs intact (no network: nothing here touches a bucket)."""
import os

from dss_jax import storage

URL = "gs://my-bucket/dss/cqa_xxl"


def test_url_survives_joining_and_parent():
    path = storage.run_path(URL) / "checkpoints" / "1000"
    assert os.fspath(path) == "gs://my-bucket/dss/cqa_xxl/checkpoints/1000"
    assert os.fspath(path.parent.parent) == URL


def test_url_name_is_its_last_component():
    assert storage.run_path("gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000").name == \
        "checkpoint_1000000"


def test_pathlib_would_have_broken_the_url():
    import pathlib

    assert str(pathlib.Path(URL)) == "gs:/my-bucket/dss/cqa_xxl"  # why run_path exists
    assert os.fspath(storage.run_path(URL)) == URL


def test_home_relative_local_path_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert os.fspath(storage.run_path("~/runs/a")) == os.fspath(tmp_path / "runs" / "a")
