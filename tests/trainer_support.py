"""Helpers for the trainer tests (no tests here): tiny pre-tokenised SeqIO tasks, gin runs.

The tasks use a pass-through vocabulary of 128 ids (pad 0, eos 1), so they need neither
a SentencePiece model nor the reference data.  Importing this module registers:
``trainer_test_paired`` (paired features), ``trainer_test_label``,
``trainer_test_rationale`` and the mixture ``trainer_test_mix`` (rates 1 : 1).
"""
from __future__ import annotations

import numpy as np
import seqio
import tensorflow as tf

VOCAB_SIZE = 128
NUM_EXAMPLES = 40
VOCAB = seqio.PassThroughVocabulary(size=VOCAB_SIZE, eos_id=1)


def synthetic_example(i: int) -> dict:
    """Example i: input ids depend on i, the label is one token, the rationale 2-6 tokens."""
    rng = np.random.default_rng(i)
    x = [int(t) for t in rng.integers(10, 100, size=2 + i % 5)]
    label = [10 + (sum(x) % 7), 1]
    rationale = [int(t) for t in rng.integers(10, 100, size=2 + i % 5)] + [1]
    return {"example_id": i, "label_inputs": [3] + x + [1], "label_targets": label,
            "rationale_inputs": [4] + x + [1], "rationale_targets": rationale}


def _generator(features):
    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed

        def gen():
            for i in range(NUM_EXAMPLES):
                ex = synthetic_example(i)
                yield {name: np.asarray(ex[src], np.int32) for name, src in features.items()}

        signature = {name: tf.TensorSpec([None], tf.int32) for name in features}
        return tf.data.Dataset.from_generator(gen, output_signature=signature)

    return dataset_fn


def exact_match(targets, predictions) -> dict:
    """Percent of predictions equal to their target (token lists from the pass-through vocabulary)."""
    hits = [list(t) == list(p) for t, p in zip(targets, predictions)]
    return {"accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def _register(name, features, metric_fns=()):
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_generator(features), splits=["train", "validation", "test"]),
        preprocessors=[],
        output_features={k: seqio.Feature(VOCAB, add_eos=False) for k in features},
        metric_fns=list(metric_fns),
        shuffle_buffer_size=64,
    )


_register("trainer_test_paired", {k: k for k in ("label_inputs", "label_targets", "rationale_inputs",
                                                   "rationale_targets")})
_register("trainer_test_label", {"inputs": "label_inputs", "targets": "label_targets"}, [exact_match])
_register("trainer_test_rationale", {"inputs": "rationale_inputs", "targets": "rationale_targets"})
if "trainer_test_mix" not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add("trainer_test_mix", [("trainer_test_label", 1.0), ("trainer_test_rationale", 1.0)])


def random_batch(rng: np.random.Generator, rows: int, enc_len: int, dec_len: int, vocab: int = VOCAB_SIZE,
                 task_ids=None) -> dict:
    """A batch in the encoder-decoder layout with random tokens and ragged target lengths."""
    targets = rng.integers(2, vocab, size=(rows, dec_len)).astype(np.int32)
    lengths = rng.integers(1, dec_len + 1, size=rows)
    weights = (np.arange(dec_len)[None, :] < lengths[:, None]).astype(np.float32)
    targets = targets * weights.astype(np.int32)
    decoder_inputs = np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], axis=1)
    if task_ids is None:
        task_ids = np.tile((np.arange(rows) % 2)[:, None], (1, dec_len))
    return {
        "encoder_input_tokens": rng.integers(2, vocab, size=(rows, enc_len)).astype(np.int32),
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
        "task_ids": np.asarray(task_ids, np.int32) * weights.astype(np.int32),
    }


def tiny_run_gin(task: str = "trainer_test_paired", eval_task: str = "trainer_test_label", **bindings) -> str:
    """A gin config training the tiny T5 on a synthetic task (bindings override the defaults)."""
    values = {
        "TrainConfig.steps": 6, "InputConfig.batch_size": 4, "OptimizerConfig.learning_rate": 1e-3,
        "EvalConfig.every": 0, "InputConfig.sequence_lengths": "{'inputs': 16, 'targets': 8}",
        "EvalConfig.max_decode_len": 4, "CheckpointConfig.every": 2, "TrainConfig.log_every": 1,
        "EvalConfig.batch_size": 8, "TrainConfig.progress_bar": False, "TrainConfig.tensorboard": False,
        "OptimizerConfig.schedule": "'constant'",
    }
    values.update(bindings)
    lines = ["import trainer_support", "include 'runs/finetune.gin'", "include 'models/t5_1_1_tiny.gin'",
             f"Experiment.task = '{task}'", f"Experiment.eval_tasks = ['{eval_task}']",
             "Experiment.rationale_tasks = ['trainer_test_rationale']", "Experiment.task_module = 'trainer_support'",
             "model_config.overrides = {'dropout_rate': 0.0}"]
    lines += [f"{k} = {v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
