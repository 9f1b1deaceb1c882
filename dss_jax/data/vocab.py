"""The SentencePiece vocabulary of the SeqIO tasks, chosen by one setting.

The setting, by precedence: the process-level override `set_vocab_setting(...)` (what a
run's settings record calls), else `$DSS_VOCAB`, else the benchmark's default. Values:

- `t5`: T5 1.1's public vocabulary
  `gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model` with `extra_ids=0`, as
  T5X's `t5_1_1/*.gin`: that file already holds the 100 sentinels, so this gives 32,100
  ids (the checkpoints' 32,128 embedding rows are these padded to a multiple of 128).
  Adding 100 more extra ids would give 32,200 ids, more than the checkpoints' rows and
  unequal to T5X's vocabulary. Loaded only when first used, so tasks register offline.
  `$DSS_T5_VOCAB_FILE` points this setting at a copy of that file (a local mirror for
  offline machines); the arrangement (`extra_ids=0`) stays T5 1.1's.
- `embedded`: a SentencePiece model that the project trains deterministically on the
  embedded `arith` benchmark's text and caches under `$DSS_CACHE_DIR` (default
  ~/.cache/dss_jax); pad 0, eos 1, unk 2 like T5.
- a path to any SentencePiece `.model` file (e.g. ../shared/bench/spm8k.model), local or a
  URL such as `gs://bucket/spm.model` (paths go through `dss_jax.storage`), used with
  `extra_ids=0`: the file's own pieces are the ids.

The embedded benchmark's tasks default to `embedded` (they are the offline path); every
other benchmark defaults to T5's. The override and `DSS_VOCAB` take precedence over both.

`SettingVocabulary` resolves the setting each time it is used (not at import), so tasks
registered in one process follow the setting of the moment; it compares equal to a
plain `seqio.SentencePieceVocabulary` of the same file (T5X checks that the model's and
the tasks' vocabularies match).

`train_sentencepiece` is the project's vocabulary trainer (`python -m dss_jax.data
train_vocab --input text.txt --output my.model --vocab_size 1000`).
"""
from __future__ import annotations

import functools
import os
import pathlib
import tempfile
import threading
from typing import Iterable, Optional, Sequence

import seqio
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from dss_jax import storage
from dss_jax.data.fetch import cache_dir

VOCAB_ENV = "DSS_VOCAB"
T5_SETTING = "t5"
EMBEDDED_SETTING = "embedded"
T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
T5_VOCAB_FILE_ENV = "DSS_T5_VOCAB_FILE"  # where the `t5` setting reads T5_VOCAB_PATH's file from
# The file already holds T5's 100 sentinels (`<extra_id_0>`..`<extra_id_99>`): add none.
T5_EXTRA_IDS = 0
EMBEDDED_VOCAB_SIZE = 512
EMBEDDED_MODEL_TYPE = "bpe"
# "84.0" -> "▁84" ".0": a number of the equation is the same token as in the problem text.
EMBEDDED_USER_SYMBOLS = (".0",)

_train_lock = threading.Lock()
_setting_override: Optional[str] = None


def set_vocab_setting(setting: Optional[str]) -> None:
    """Sets the process-level vocabulary setting (None or "": back to $DSS_VOCAB / defaults).

    It takes precedence over `$DSS_VOCAB` and the benchmark defaults, and is read by every
    `SettingVocabulary` when used, so it also applies to tasks registered earlier.
    """
    global _setting_override
    if setting is not None and not isinstance(setting, str):
        raise TypeError(f"vocabulary setting must be a string or None, got {setting!r}")
    _setting_override = setting or None


def train_sentencepiece(lines: Iterable[str], output_path: os.PathLike, vocab_size: int,
                        model_type: str = "unigram", split_digits: bool = False,
                        user_defined_symbols: Sequence[str] = ()) -> pathlib.Path:
    """Trains a T5-style SentencePiece model (pad 0, eos 1, unk 2, no bos) on `lines`.

    Deterministic for the same lines and settings (one thread, no sampling, no recorded
    temporary paths: equal inputs give equal bytes). `vocab_size` is an upper bound
    (a small corpus may support fewer pieces). Written atomically to `output_path`.
    """
    output_path = pathlib.Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_path.parent) as work:
        corpus = pathlib.Path(work) / "corpus.txt"
        corpus.write_text("\n".join(line for line in lines if line.strip()) + "\n", encoding="utf-8")
        prefix = pathlib.Path(work) / "spm"
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            split_digits=split_digits,
            user_defined_symbols=list(user_defined_symbols),
            num_threads=1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        _strip_training_paths(pathlib.Path(f"{prefix}.model"))
        os.replace(f"{prefix}.model", output_path)
    return output_path


def _strip_training_paths(model_path: pathlib.Path) -> None:
    """Removes the temporary file names SentencePiece records, so equal models are equal bytes."""
    model = sentencepiece_model_pb2.ModelProto.FromString(model_path.read_bytes())
    del model.trainer_spec.input[:]
    model.trainer_spec.input.append("corpus.txt")
    model.trainer_spec.model_prefix = "spm"
    model_path.write_bytes(model.SerializeToString(deterministic=True))


def embedded_vocab_path(cache: Optional[os.PathLike] = None) -> pathlib.Path:
    """The embedded benchmark's SentencePiece model, trained on first request."""
    from dss_jax.data import embedded

    config = embedded.ArithConfig()
    settings = f"{EMBEDDED_MODEL_TYPE}{EMBEDDED_VOCAB_SIZE}"
    path = cache_dir(cache) / "vocab" / f"arith-{config.cache_key()}-{settings}.model"
    with _train_lock:
        if not path.is_file():
            train_sentencepiece(embedded.vocabulary_training_text(config), path, EMBEDDED_VOCAB_SIZE,
                                model_type=EMBEDDED_MODEL_TYPE, user_defined_symbols=EMBEDDED_USER_SYMBOLS)
    return path


def t5_vocab_file() -> str:
    """The file of the `t5` setting: $DSS_T5_VOCAB_FILE if set (a copy), else T5_VOCAB_PATH."""
    return os.environ.get(T5_VOCAB_FILE_ENV) or T5_VOCAB_PATH


@functools.lru_cache(maxsize=None)
def _vocabulary_for(setting: str, t5_file: str) -> seqio.SentencePieceVocabulary:
    if setting == T5_SETTING:
        return _sentencepiece_file(t5_file, f"the `t5` vocabulary (${T5_VOCAB_FILE_ENV})", T5_EXTRA_IDS)
    if setting == EMBEDDED_SETTING:
        return seqio.SentencePieceVocabulary(str(embedded_vocab_path()))
    return _sentencepiece_file(setting, f"vocabulary setting {setting!r} (set_vocab_setting or ${VOCAB_ENV})", 0)


def _sentencepiece_file(setting: str, what: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
    if storage.is_remote(setting):
        # Not checked here: asking a bucket would need the network at task-registration time;
        # seqio reads the file (tf.io.gfile) when the vocabulary is first used.
        return seqio.SentencePieceVocabulary(setting, extra_ids=extra_ids)
    path = pathlib.Path(setting).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: no such SentencePiece model file {setting!r}; use `t5`, `embedded`, a "
            f"path to a .model file, or a gs:// URL of one"
        )
    return seqio.SentencePieceVocabulary(str(path), extra_ids=extra_ids)


def vocabulary_setting(default: str = T5_SETTING) -> str:
    """The active setting: `set_vocab_setting`'s if set, else $DSS_VOCAB if set, else `default`."""
    return _setting_override or os.environ.get(VOCAB_ENV) or default


def get_vocabulary(setting: Optional[str] = None, default: str = T5_SETTING) -> seqio.SentencePieceVocabulary:
    """A concrete seqio vocabulary for `setting` (else the active one)."""
    return _vocabulary_for(setting or vocabulary_setting(default), t5_vocab_file())


class SettingVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary that follows the active setting at the moment it is used.

    Subclassing `SentencePieceVocabulary` keeps it usable wherever seqio/T5X expect one
    and lets its `__eq__` take priority in comparisons with a plain one.
    """

    def __init__(self, default: str = T5_SETTING):
        self._default_setting = default
        super().__init__(sentencepiece_model_file="", extra_ids=0)

    def resolved(self) -> seqio.SentencePieceVocabulary:
        return get_vocabulary(default=self._default_setting)

    def _model_context(self):
        return self.resolved()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        return self.resolved().sentencepiece_model_file

    @property
    def extra_ids(self) -> int:
        return self.resolved().extra_ids

    @property
    def tf_tokenizer(self):
        return self.resolved().tf_tokenizer

    def __eq__(self, other):
        if isinstance(other, SettingVocabulary):
            other = other.resolved()
        return isinstance(other, seqio.SentencePieceVocabulary) and self.resolved() == other

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash((SettingVocabulary, self._default_setting))

    def __reduce__(self):
        return (SettingVocabulary, (self._default_setting,))

    def __str__(self) -> str:
        return f"SettingVocabulary({vocabulary_setting(self._default_setting)!r})"

    __repr__ = __str__
