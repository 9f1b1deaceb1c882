"""The tasks' vocabulary setting: precedence, T5 1.1's id arithmetic, and URL settings (offline)."""
import pathlib

import pytest
import seqio

from dss_jax.data import vocab
from vocab_support import add_sentinels

T5_SENTINELS = 100
# T5 1.1 checkpoints: 32,100 ids padded to 32,128 embedding rows.
T5_1_1_EMBEDDING_ROWS = 32128


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(vocab.VOCAB_ENV, raising=False)
    monkeypatch.delenv(vocab.T5_VOCAB_FILE_ENV, raising=False)
    yield
    vocab.set_vocab_setting(None)


@pytest.fixture(scope="module")
def spm_with_100_extras(tmp_path_factory) -> tuple[pathlib.Path, int]:
    """A small SentencePiece model trained here, plus 100 sentinel pieces of its own."""
    d = tmp_path_factory.mktemp("spm")
    lines = [f"question {i}: what is {i} plus {i + 1}? the answer is {2 * i + 1}." for i in range(300)]
    base = vocab.train_sentencepiece(lines, d / "base.model", vocab_size=200)
    base_size = seqio.SentencePieceVocabulary(str(base)).vocab_size
    return add_sentinels(base, d / "base.100extra.model", T5_SENTINELS), base_size


def test_t5_setting_adds_no_extra_ids_to_the_100extra_file():
    resolved = vocab.get_vocabulary(vocab.T5_SETTING)
    assert resolved.sentencepiece_model_file == "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
    assert resolved.extra_ids == 0


def test_100extra_file_with_zero_extra_ids_has_base_plus_100_ids(spm_with_100_extras):
    path, base_size = spm_with_100_extras
    assert seqio.SentencePieceVocabulary(str(path), extra_ids=vocab.T5_EXTRA_IDS).vocab_size == base_size + 100


def test_adding_100_extra_ids_to_the_100extra_file_would_give_base_plus_200(spm_with_100_extras):
    path, base_size = spm_with_100_extras
    assert seqio.SentencePieceVocabulary(str(path), extra_ids=100).vocab_size == base_size + 200


def test_t5_1_1_arrangement_fits_the_checkpoints_embedding_rows():
    # cc_all.32000.100extra: 32,000 pieces + 100 sentinels in the file, no extra ids on top.
    assert 32000 + T5_SENTINELS + vocab.T5_EXTRA_IDS == 32100 <= T5_1_1_EMBEDDING_ROWS
    assert 32000 + T5_SENTINELS + 100 > T5_1_1_EMBEDDING_ROWS  # the old arrangement did not fit


def test_sentinel_zero_is_the_last_id_as_in_t5(spm_with_100_extras):
    path, _ = spm_with_100_extras
    v = seqio.SentencePieceVocabulary(str(path), extra_ids=0)
    assert v.tokenizer.piece_to_id("<extra_id_0>") == v.vocab_size - 1
    assert v.tokenizer.piece_to_id("<extra_id_99>") == v.vocab_size - 100


def test_t5_setting_reads_a_local_copy_with_the_same_arrangement(spm_with_100_extras, monkeypatch):
    path, base_size = spm_with_100_extras
    monkeypatch.setenv(vocab.T5_VOCAB_FILE_ENV, str(path))
    resolved = vocab.SettingVocabulary(vocab.T5_SETTING).resolved()
    assert resolved == seqio.SentencePieceVocabulary(str(path), extra_ids=0)
    assert resolved.vocab_size == base_size + 100


def test_path_setting_uses_the_files_own_pieces_only(spm_with_100_extras, monkeypatch):
    path, base_size = spm_with_100_extras
    monkeypatch.setenv(vocab.VOCAB_ENV, str(path))
    assert vocab.SettingVocabulary().vocab_size == base_size + 100


def test_explicit_setting_beats_env_var_and_default(spm_with_100_extras, bench_spm_model, monkeypatch):
    path, _ = spm_with_100_extras
    monkeypatch.setenv(vocab.VOCAB_ENV, str(bench_spm_model))
    vocab.set_vocab_setting(str(path))
    assert vocab.vocabulary_setting(vocab.EMBEDDED_SETTING) == str(path)
    assert vocab.SettingVocabulary().sentencepiece_model_file == str(path)


def test_env_var_beats_default_when_no_explicit_setting(bench_spm_model, monkeypatch):
    monkeypatch.setenv(vocab.VOCAB_ENV, str(bench_spm_model))
    vocab.set_vocab_setting(None)
    assert vocab.vocabulary_setting(vocab.EMBEDDED_SETTING) == str(bench_spm_model)


def test_default_applies_when_neither_is_set():
    assert vocab.vocabulary_setting(vocab.EMBEDDED_SETTING) == vocab.EMBEDDED_SETTING


def test_explicit_setting_reaches_vocabularies_created_before_it(spm_with_100_extras):
    path, _ = spm_with_100_extras
    earlier = vocab.SettingVocabulary()
    vocab.set_vocab_setting(str(path))
    assert earlier == seqio.SentencePieceVocabulary(str(path))


def test_gs_url_setting_resolves_without_touching_the_bucket(monkeypatch):
    url = "gs://my-bucket/vocabs/spm.model"
    monkeypatch.setenv(vocab.VOCAB_ENV, url)
    resolved = vocab.SettingVocabulary().resolved()
    assert resolved.sentencepiece_model_file == url and resolved.extra_ids == 0


def test_missing_local_file_names_the_setting(tmp_path):
    missing = tmp_path / "absent.model"
    vocab.set_vocab_setting(str(missing))
    with pytest.raises(FileNotFoundError, match="absent.model"):
        vocab.SettingVocabulary().resolved()
