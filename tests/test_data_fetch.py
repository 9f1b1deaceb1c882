"""Fetching datasets.zip: checksum and unpacking, on zips the tests create (no network)."""
import hashlib
import zipfile

import pytest

from dss_jax.data import fetch, readers
from dss_jax.data.__main__ import main


def _make_zip(path, wrap_folder="datasets"):
    prefix = f"{wrap_folder}/" if wrap_folder else ""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}svamp/svamp_test.json", '{"input": "q", "label": "( 1.0 + 1.0 )"}\n')
        archive.writestr(f"{prefix}svamp/llm/test_CoT_0.json", '["So 2. The answer is (1 + 1)."]')
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unpacked_zip_is_a_readable_data_dir(tmp_path):
    digest = _make_zip(tmp_path / "datasets.zip")
    data_dir = fetch.unpack_datasets_zip(tmp_path / "datasets.zip", tmp_path / "out", digest)
    examples = readers.load_split("svamp", "test", data_dir).examples
    assert [(e.gold_label, e.teacher_label) for e in examples] == [("( 1.0 + 1.0 )", "(1 + 1)")]


def test_zip_without_wrapping_folder_unpacks_too(tmp_path):
    digest = _make_zip(tmp_path / "datasets.zip", wrap_folder=None)
    data_dir = fetch.unpack_datasets_zip(tmp_path / "datasets.zip", tmp_path / "out", digest)
    assert (data_dir / "svamp" / "svamp_test.json").is_file()


def test_wrong_checksum_is_refused_before_unpacking(tmp_path):
    _make_zip(tmp_path / "datasets.zip")
    with pytest.raises(fetch.ChecksumMismatchError, match="expected 00"):
        fetch.unpack_datasets_zip(tmp_path / "datasets.zip", tmp_path / "out", "00" * 32)
    assert not (tmp_path / "out").exists()


def test_zip_member_escaping_the_destination_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../escaped.txt", "x")
    with pytest.raises(ValueError, match="outside"):
        fetch.unpack_datasets_zip(tmp_path / "evil.zip", tmp_path / "out", None)
    assert not (tmp_path / "escaped.txt").exists()


def test_fetch_downloads_once_and_records_the_checksum(tmp_path):
    source = tmp_path / "source.zip"
    digest = _make_zip(source)
    calls = []

    def fake_download(url, target):
        calls.append(url)
        target.write_bytes(source.read_bytes())

    data_dir = fetch.fetch_datasets(cache=tmp_path / "cache", downloader=fake_download)
    assert (tmp_path / "cache" / "datasets.zip.sha256").read_text().strip() == digest
    assert fetch.fetch_datasets(cache=tmp_path / "cache", downloader=fake_download) == data_dir
    assert calls == [fetch.DATASETS_ZIP_URL]


def test_fetch_checks_a_later_use_against_the_recorded_checksum(tmp_path):
    source = tmp_path / "source.zip"
    _make_zip(source)
    cache = tmp_path / "cache"
    fetch.fetch_datasets(cache=cache, downloader=lambda url, target: target.write_bytes(source.read_bytes()))
    (cache / "datasets.zip").write_bytes(b"tampered")
    with pytest.raises(fetch.ChecksumMismatchError):
        fetch.fetch_datasets(cache=cache)


def test_fetch_command_does_nothing_without_yes(tmp_path, capsys):
    assert main(["fetch", "--cache_dir", str(tmp_path)]) == 1
    assert "pass --yes" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
