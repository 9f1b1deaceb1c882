"""SeqIO tasks of the CPU benchmark protocol, for timing ``python -m dss_jax.train`` on its work.

Importing this module (``--gin.Experiment.task_module="'protocol_tasks'"`` with ``bench/`` on
``PYTHONPATH``) registers:

* ``dss_bench_cqa_paired``: the protocol's examples (the first ``DSS_BENCH_EXAMPLES``,
  default 1024, rows of CQA's training file with their PaLM rationales, in file order,
  parsed by ``dss_jax.data``) as paired features: ``"predict: " + input`` -> gold label and
  ``"explain: " + input`` -> teacher rationale;
* ``dss_bench_cqa_label``: the label half of the same rows (the trainer's evaluation task).

Tokens are the protocol's: the protocol's SentencePiece model (``DSS_BENCH_SPM``, default
``$DSS_SHARED_DIR/bench/spm8k.model``), truncated at the sequence length with EOS appended
(``seqio.preprocessors.append_eos_after_trim``), so that a step holds the same sequences as
``bench/dss_jax_protocol.py``'s step (the protocol's rows are not the DSS tasks' training
split, which is the file minus a validation carve-out, permuted).
"""
from __future__ import annotations

import functools
import os
import pathlib

import numpy as np
import seqio
import tensorflow as tf

PAIRED_TASK = "dss_bench_cqa_paired"
LABEL_TASK = "dss_bench_cqa_label"
_REPO = pathlib.Path(__file__).resolve().parent.parent
_SHARED = pathlib.Path(os.environ.get("DSS_SHARED_DIR", _REPO.parent / "shared"))


def _spm_path() -> str:
    path = pathlib.Path(os.environ.get("DSS_BENCH_SPM", _SHARED / "bench" / "spm8k.model"))
    if not path.is_file():
        raise FileNotFoundError(f"the protocol's SentencePiece model {path} is missing; set DSS_BENCH_SPM")
    return str(path)


@functools.cache
def _rows() -> tuple[tuple[str, str, str, str], ...]:
    from dss_jax.data import readers

    data_dir = os.environ.get("DSS_DATA_DIR", str(_SHARED / "dss_datasets"))
    count = int(os.environ.get("DSS_BENCH_EXAMPLES", "1024"))
    examples = readers.read_file_split("cqa", "train", data_dir=data_dir).examples[:count]
    return tuple(("predict: " + e.input, e.gold_label, "explain: " + e.input, e.teacher_rationale) for e in examples)


def _dataset(split, shuffle_files, seed=None, *, paired: bool):
    del split, shuffle_files, seed  # the protocol's rows, in order, for every split
    columns = list(zip(*_rows()))
    names = ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets") if paired else \
        ("inputs", "targets")
    return tf.data.Dataset.from_tensor_slices({name: list(columns[i]) for i, name in enumerate(names)})


def exact_match(targets, predictions) -> dict:
    return {"accuracy": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)])) if targets else 0.0}


def _register(name: str, paired: bool) -> None:
    if name in seqio.TaskRegistry.names():
        return
    vocabulary = seqio.SentencePieceVocabulary(_spm_path())
    features = ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets") if paired else \
        ("inputs", "targets")
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(functools.partial(_dataset, paired=paired),
                                        splits=["train", "validation", "test"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features={f: seqio.Feature(vocabulary, add_eos=True) for f in features},
        postprocess_fn=lambda text, example=None, is_target=False: text.strip() if isinstance(text, str) else text,
        metric_fns=[] if paired else [exact_match],
        shuffle_buffer_size=None,
    )


_register(PAIRED_TASK, paired=True)
_register(LABEL_TASK, paired=False)
