"""``python -m dss_jax.infer``: predictions of a trained run as JSON lines.

    python -m dss_jax.infer --gin_file=runs/infer.gin --gin.MODEL_DIR="'/tmp/run'" \
        --gin.BENCHMARK="'arith'" --gin.OUTPUT="'/tmp/run/predictions.jsonl'" [--gin.RATIONALES=True]

One line per example of the split, in order:
``{"index", "input", "target", "prediction", "raw_prediction"}`` from the label task
(``predict: x``), plus ``"rationale"`` (the decoded ``explain: x`` output) when
``RATIONALES = True``.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Mapping, Sequence

import gin

from dss_jax import eval as eval_lib
from dss_jax import train as train_lib


@gin.configurable
def infer(model_dir: str = gin.REQUIRED, benchmark: str = gin.REQUIRED, output: str = gin.REQUIRED,
          labels: str = "gold", split: str = "test", step: int | None = None, rationales: bool = False,
          max_examples: int | None = None, sequence_lengths: Mapping[str, int] | None = None,
          batch_size: int = 64, max_decode_len: int = 64, rationale_max_decode_len: int = 256,
          label_task: str | None = None, rationale_task: str | None = None, vocab: str | None = None) -> int:
    """Write predictions; returns the number of lines written."""
    train_lib._set_vocab(vocab)
    from dss_jax import evaluation

    sequence_lengths = dict(sequence_lengths or {"inputs": 512, "targets": 256})
    model, params, step = eval_lib.load_run(model_dir, step)
    label_task = label_task or f"dss_{benchmark}_label_{labels}"
    label_result = evaluation.evaluate_task(model, params, label_task, split, sequence_lengths=sequence_lengths,
                                            batch_size=batch_size, max_decode_len=max_decode_len,
                                            max_examples=max_examples)
    rationale_records = None
    if rationales:
        rationale_task = rationale_task or f"dss_{benchmark}_rationale"
        rationale_lengths = dict(sequence_lengths, targets=max(sequence_lengths["targets"], rationale_max_decode_len))
        rationale_result = evaluation.evaluate_task(model, params, rationale_task, split,
                                                    sequence_lengths=rationale_lengths, batch_size=batch_size,
                                                    max_decode_len=rationale_max_decode_len,
                                                    max_examples=max_examples)
        rationale_records = rationale_result.predictions
        if len(rationale_records) != len(label_result.predictions):
            raise ValueError(f"{rationale_task} has {len(rationale_records)} {split} examples but {label_task} has "
                             f"{len(label_result.predictions)}; they cannot be paired")
    out_path = pathlib.Path(output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        for i, record in enumerate(label_result.predictions):
            line = {"index": i, "input": record["inputs"], "target": record["target"],
                    "prediction": record["prediction"], "raw_prediction": record["raw"]}
            if rationale_records is not None:
                line["rationale"] = rationale_records[i]["raw"]
            f.write(json.dumps(line) + "\n")
    print(f"wrote {len(label_result.predictions)} predictions of {label_task} ({split}, checkpoint step {step}) "
          f"to {out_path}; accuracy {label_result.accuracy}", flush=True)
    return len(label_result.predictions)


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils

    gin_utils.parse_command_line("python -m dss_jax.infer", __doc__, argv)
    infer()
    return 0

if __name__ == "__main__":
    from dss_jax import host_memory

    host_memory.reexec_with_huge_pages()
    sys.exit(main())
