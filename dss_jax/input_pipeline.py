"""SeqIO input pipeline of the trainer: feature conversion, pairing, resumable batches.

Three kinds of training task are recognised from the registry:

* ``paired``  -- a Task whose examples carry ``label_inputs, label_targets,
  rationale_inputs, rationale_targets`` (``dss_{b}_paired_{l}``).  ``PairedFeatureConverter``
  turns every example into its label and its rationale sequence, next to each other,
  so one batch holds both versions of the same examples and ONE forward pass computes
  both losses.
* ``mixture`` -- a ``seqio.Mixture`` (``dss_{b}_mix_{l}_lambda*``): its sub-tasks are sampled
  at the mixture's rates, with the task id (label / rationale) attached to each example.
* ``single``  -- any other Task with ``inputs`` and ``targets`` (the baselines).

All of them become SeqIO's encoder-decoder model features (``TaskAwareEncDecFeatureConverter``,
``seqio.EncDecFeatureConverter`` plus a per-target-token ``task_ids`` feature that is
packed along with the targets), optionally packed, batched, and converted to numpy.

The pipeline is deterministic for a given seed.  Its position is the number of batches
consumed; ``train_batches(..., start_batch=n)`` continues exactly after batch ``n``, which
is how a restarted run resumes (the position is saved in every checkpoint).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from dss_jax import losses

PAIRED_FEATURES = ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets")
TRAINING_KINDS = ("paired", "mixture", "single")


def get_provider(name: str) -> seqio.DatasetProviderBase:
    """The registered seqio Task or Mixture ``name``, with a clear error when unknown.

    Tasks are registered by the caller (the entrypoints import the experiment's task
    module, ``dss_tasks`` by default, before they build anything).
    """
    if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
        return seqio.get_mixture_or_task(name)
    known = sorted(n for n in seqio.TaskRegistry.names() | seqio.MixtureRegistry.names() if n.startswith("dss_"))
    hint = f"; registered DSS names include {', '.join(known[:12])}" if known else \
        "; is the module that registers it imported (Experiment.task_module)?"
    raise KeyError(f"no seqio task or mixture named {name!r}{hint}")


def training_kind(provider: seqio.DatasetProviderBase) -> str:
    """``paired``, ``mixture`` or ``single`` (see the module docstring)."""
    if isinstance(provider, seqio.Mixture):
        return "mixture"
    features = set(provider.output_features)
    if set(PAIRED_FEATURES) <= features:
        return "paired"
    if {"inputs", "targets"} <= features:
        return "single"
    raise ValueError(f"task {provider.name!r} has features {sorted(features)}: expected inputs/targets or "
                     f"{', '.join(PAIRED_FEATURES)}")


def _with_task_ids(example: Mapping[str, tf.Tensor], task_id: int) -> dict:
    """Adds the per-target-token task id, stored as ``task_id + 1`` while in the stream:
    SeqIO's packing treats 0 as padding and would drop label (id 0) tokens."""
    out = {"inputs": example["inputs"], "targets": example["targets"]}
    out["task_ids"] = tf.fill(tf.shape(example["targets"]), tf.constant(task_id + 1, tf.int32))
    return out


class TaskAwareEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """``seqio.EncDecFeatureConverter`` that also carries ``task_ids`` (one per target token).

    ``task_ids`` is packed/padded with the targets, so in a packed row every target token
    keeps the id of the task its sequence came from.
    """

    TASK_FEATURES = {
        **seqio.EncDecFeatureConverter.TASK_FEATURES,
        "task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        "task_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def _convert_example(self, features):
        d = dict(super()._convert_example(features))
        d["task_ids"] = tf.maximum(features["task_ids"] - 1, 0)  # undo the +1 (padding -> 0)
        return d

    def get_model_feature_lengths(self, task_feature_lengths):
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["task_ids"] = task_feature_lengths["targets"]
        return lengths


def with_task_id_lengths(sequence_lengths: Mapping[str, int]) -> dict:
    """Task feature lengths for ``TaskAwareEncDecFeatureConverter``."""
    return {"inputs": int(sequence_lengths["inputs"]), "targets": int(sequence_lengths["targets"]),
            "task_ids": int(sequence_lengths["targets"])}


def unpair(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Each paired example -> its label sequence, then its rationale sequence (with task ids)."""

    def split(example):
        label = {"inputs": example["label_inputs"], "targets": example["label_targets"]}
        rationale = {"inputs": example["rationale_inputs"], "targets": example["rationale_targets"]}
        return tf.data.Dataset.from_tensors(_with_task_ids(label, losses.LABEL_TASK_ID)).concatenate(
            tf.data.Dataset.from_tensors(_with_task_ids(rationale, losses.RATIONALE_TASK_ID)))

    return ds.flat_map(split)


class PairedFeatureConverter(seqio.FeatureConverter):
    """Paired task features -> encoder-decoder features with label and rationale side by side.

    Without packing, example i becomes rows 2i (label) and 2i+1 (rationale) of the
    stream, so a batch of 2B rows holds both versions of B examples.  With packing the
    two sequences are adjacent in the stream and are packed together.
    """

    TASK_FEATURES = {name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for name in PAIRED_FEATURES}
    MODEL_FEATURES = TaskAwareEncDecFeatureConverter.MODEL_FEATURES
    PACKING_FEATURE_DTYPES = TaskAwareEncDecFeatureConverter.PACKING_FEATURE_DTYPES

    def _convert_features(self, ds, task_feature_lengths):
        single = TaskAwareEncDecFeatureConverter(pack=self.pack, bos_id=self.bos_id)
        return single._convert_features(unpair(ds), self._single_lengths(task_feature_lengths))

    @staticmethod
    def _single_lengths(task_feature_lengths):
        inputs = max(task_feature_lengths["label_inputs"], task_feature_lengths["rationale_inputs"])
        targets = max(task_feature_lengths["label_targets"], task_feature_lengths["rationale_targets"])
        return with_task_id_lengths({"inputs": inputs, "targets": targets})

    def get_model_feature_lengths(self, task_feature_lengths):
        single = TaskAwareEncDecFeatureConverter(pack=self.pack, bos_id=self.bos_id)
        return single.get_model_feature_lengths(self._single_lengths(task_feature_lengths))


def paired_lengths(sequence_lengths: Mapping[str, int]) -> dict:
    """``{"inputs", "targets"}`` lengths -> the four paired feature lengths."""
    i, t = int(sequence_lengths["inputs"]), int(sequence_lengths["targets"])
    return {"label_inputs": i, "label_targets": t, "rationale_inputs": i, "rationale_targets": t}


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """What the train loop reads (built by ``Experiment.stream()``).

    task: seqio Task or Mixture name.
    rationale_tasks: sub-tasks of a mixture whose targets are rationales (task id 1); every
      other task's targets are label-like (task id 0).
    sequence_lengths: ``{"inputs": ..., "targets": ...}`` (truncation lengths; the
      reference code uses 1024 / 256).
    batch_size: global examples per step: rows of the batch, except in paired mode without
      packing where each example gives two rows (label and rationale).  With ``pack=True``
      it is the number of packed rows.
    pack: SeqIO packing (segment ids and positions are passed to the model).
    seed: shuffle / mixture-sampling seed (part of the data position).
    shuffle: shuffle the training data.
    """

    task: str
    sequence_lengths: Mapping[str, int]
    rationale_tasks: tuple[str, ...] = ()
    batch_size: int = 64
    pack: bool = False
    seed: int = 0
    shuffle: bool = True
    split: str = "train"

    def task_id(self, task_name: str) -> int:
        return losses.RATIONALE_TASK_ID if task_name in self.rationale_tasks else losses.LABEL_TASK_ID

    def position(self, batches_consumed: int) -> dict:
        """The data position stored in checkpoints."""
        return {"batches_consumed": int(batches_consumed), "seed": int(self.seed), "task": self.task,
                "batch_size": int(self.batch_size), "pack": bool(self.pack),
                "sequence_lengths": {k: int(v) for k, v in self.sequence_lengths.items()}}

    def check_position(self, position: Mapping[str, Any]) -> int:
        """Batches consumed, after checking the checkpoint was made with the same input settings."""
        expected = self.position(0)
        for key in ("seed", "task", "batch_size", "pack", "sequence_lengths"):
            if key in position and position[key] != expected[key]:
                raise ValueError(f"checkpoint data position has {key}={position[key]!r} but this run uses "
                                 f"{expected[key]!r}; resuming would not continue the same data stream "
                                 f"(use a new MODEL_DIR or the original settings)")
        return int(position["batches_consumed"])


def _mixture_stream(mixture: seqio.Mixture, cfg: StreamConfig, shard_info) -> tf.data.Dataset:
    datasets, rates = [], []
    for task in mixture.tasks:
        if cfg.split not in task.splits:
            raise ValueError(f"task {task.name} of mixture {mixture.name} has no {cfg.split!r} split")
        ds = task.get_dataset(dict(cfg.sequence_lengths), split=cfg.split, shuffle=cfg.shuffle, seed=cfg.seed,
                              shard_info=shard_info, num_epochs=None)
        task_id = cfg.task_id(task.name)
        datasets.append(ds.map(lambda ex, t=task_id: _with_task_ids(ex, t), num_parallel_calls=tf.data.AUTOTUNE))
        rates.append(float(mixture.get_rate(task)))
    total = sum(rates)
    if total <= 0:
        raise ValueError(f"mixture {mixture.name} has no positive rates")
    return tf.data.Dataset.sample_from_datasets(datasets, weights=[r / total for r in rates], seed=cfg.seed,
                                                stop_on_empty_dataset=True)


def model_feature_dataset(cfg: StreamConfig, shard_info: seqio.ShardInfo | None = None,
                          num_epochs: int | None = None) -> tuple[tf.data.Dataset, str]:
    """Unbatched model features (with ``task_ids``) of ``cfg.task``, and its training kind."""
    provider = get_provider(cfg.task)
    kind = training_kind(provider)
    if kind == "paired":
        ds = provider.get_dataset(paired_lengths(cfg.sequence_lengths), split=cfg.split, shuffle=cfg.shuffle,
                                  seed=cfg.seed, shard_info=shard_info, num_epochs=num_epochs)
        ds = PairedFeatureConverter(pack=cfg.pack)(ds, paired_lengths(cfg.sequence_lengths))
        return ds, kind
    if kind == "mixture":
        ds = _mixture_stream(provider, cfg, shard_info)
    else:
        ds = provider.get_dataset(dict(cfg.sequence_lengths), split=cfg.split, shuffle=cfg.shuffle, seed=cfg.seed,
                                  shard_info=shard_info, num_epochs=num_epochs)
        ds = ds.map(lambda ex, t=cfg.task_id(provider.name): _with_task_ids(ex, t), num_parallel_calls=tf.data.AUTOTUNE)
    ds = TaskAwareEncDecFeatureConverter(pack=cfg.pack)(ds, with_task_id_lengths(cfg.sequence_lengths))
    return ds, kind


def rows_per_batch(cfg: StreamConfig, kind: str) -> int:
    """Rows of one global batch."""
    return 2 * cfg.batch_size if (kind == "paired" and not cfg.pack) else cfg.batch_size


def _cast_batch(batch: Mapping[str, np.ndarray]) -> dict:
    out = {}
    for name, value in batch.items():
        out[name] = value.astype(np.float32) if name == "decoder_loss_weights" else value.astype(np.int32)
    return out


def train_batches(cfg: StreamConfig, start_batch: int = 0, shard_info: seqio.ShardInfo | None = None,
                  num_hosts: int = 1) -> tuple[Iterator[dict], str]:
    """Endless iterator of this host's numpy batches, continuing after ``start_batch`` batches.

    Each host reads its own shard (``shard_info``) and ``rows_per_batch / num_hosts`` rows.
    """
    ds, kind = model_feature_dataset(cfg, shard_info=shard_info, num_epochs=None)
    rows = rows_per_batch(cfg, kind)
    if rows % num_hosts:
        raise ValueError(f"{rows} rows per batch are not divisible by {num_hosts} hosts")
    ds = ds.batch(rows // num_hosts, drop_remainder=True)
    if start_batch:
        ds = ds.skip(start_batch)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    import tensorflow_datasets as tfds

    return (_cast_batch(b) for b in tfds.as_numpy(ds)), kind


def count_sequences(batch: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Number of label and rationale target sequences in a numpy batch (packed or not)."""
    weights = batch["decoder_loss_weights"] > 0
    task_ids = batch.get("task_ids", np.zeros_like(batch["decoder_target_tokens"]))
    segments = batch.get("decoder_segment_ids", weights.astype(np.int32))
    counts = {}
    for task_id, name in enumerate(losses.TASK_NAMES):
        mask = weights & (task_ids == task_id)
        # a sequence starts where its segment id differs from the previous token's
        starts = mask & np.concatenate([np.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], 1)
        counts[name] = int(starts.sum())
    return counts


def count_examples(batch: Mapping[str, np.ndarray], kind: str, num_hosts: int = 1) -> tuple[int, int]:
    """(examples, target sequences) of a global batch from one host's local batch.

    In paired mode an example is a label and a rationale sequence; otherwise every
    sequence is an example.
    """
    counts = count_sequences(batch)
    sequences = counts["label"] + counts["rationale"]
    examples = counts["label"] if kind == "paired" else sequences
    return examples * num_hosts, sequences * num_hosts


def check_vocabulary_fits(vocab_size: int, task_name: str) -> None:
    """The model's embedding must cover the task's vocabulary (JAX would clamp ids silently)."""
    provider = get_provider(task_name)
    for name, feature in provider.output_features.items():
        size = feature.vocabulary.vocab_size
        if size > vocab_size:
            raise ValueError(f"task {task_name} feature {name} uses a vocabulary of {size} ids but the model's "
                             f"vocab_size is {vocab_size}; set model_config.overrides = "
                             f"{{'vocab_size': {size}}} (or larger)")
