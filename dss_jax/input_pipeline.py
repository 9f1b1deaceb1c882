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

Three ways to lay a step out (``StreamConfig.pack``): ``False`` pads every sequence to the
sequence lengths; ``True`` is SeqIO packing (rows filled from the stream, so a paired
example's two sequences may straddle steps); ``"buckets"`` takes exactly the sequences of
the step's examples (paired: the label AND the rationale sequence of each) and packs them
on the host (``dss_jax.packing``) into the fewest rows of the row-length bucket pair with
the least padding.  A bucketed step is the same whatever the number of hosts: every host
reads the whole stream, packs the global step and keeps its own slice of the rows.

The pipeline is deterministic for a given seed.  Its position is the number of batches
consumed; ``train_batches(..., start_batch=n)`` continues exactly after batch ``n``, which
is how a restarted run resumes (the position is saved in every checkpoint).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from dss_jax import losses, packing

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
    pack: False, True (SeqIO packing: segment ids and positions are passed to the model)
      or ``"buckets"`` (the step's own sequences packed on the host, see the module docstring).
    seed: shuffle / mixture-sampling seed (part of the data position).
    shuffle: shuffle the training data.
    encoder_row_lens, decoder_row_lens: the bucket row lengths of ``pack="buckets"``
      (empty: the sequence length).
    """

    task: str
    sequence_lengths: Mapping[str, int]
    rationale_tasks: tuple[str, ...] = ()
    batch_size: int = 64
    pack: Any = False
    seed: int = 0
    shuffle: bool = True
    split: str = "train"
    encoder_row_lens: tuple[int, ...] = ()
    decoder_row_lens: tuple[int, ...] = ()

    def task_id(self, task_name: str) -> int:
        return losses.RATIONALE_TASK_ID if task_name in self.rationale_tasks else losses.LABEL_TASK_ID

    @property
    def buckets(self) -> bool:
        return self.pack == "buckets"

    def row_lens(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(encoder, decoder) bucket row lengths of ``pack="buckets"``."""
        return (tuple(self.encoder_row_lens) or (int(self.sequence_lengths["inputs"]),),
                tuple(self.decoder_row_lens) or (int(self.sequence_lengths["targets"]),))

    def position(self, batches_consumed: int) -> dict:
        """The data position stored in checkpoints."""
        position = {"batches_consumed": int(batches_consumed), "seed": int(self.seed), "task": self.task,
                    "batch_size": int(self.batch_size), "pack": self.pack if self.buckets else bool(self.pack),
                    "sequence_lengths": {k: int(v) for k, v in self.sequence_lengths.items()}}
        if self.buckets:
            position["row_lens"] = [list(lens) for lens in self.row_lens()]
        return position

    def check_position(self, position: Mapping[str, Any]) -> int:
        """Batches consumed, after checking the checkpoint was made with the same input settings."""
        expected = self.position(0)
        for key in ("seed", "task", "batch_size", "pack", "sequence_lengths", "row_lens"):
            if key in position and position[key] != expected.get(key):
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


def _task_examples(provider, kind: str, cfg: StreamConfig, shard_info, num_epochs) -> tf.data.Dataset:
    """The task's examples, truncated: paired features, else ``inputs, targets, task_ids``."""
    if kind == "mixture":
        return _mixture_stream(provider, cfg, shard_info)
    lengths = paired_lengths(cfg.sequence_lengths) if kind == "paired" else dict(cfg.sequence_lengths)
    ds = provider.get_dataset(lengths, split=cfg.split, shuffle=cfg.shuffle, seed=cfg.seed,
                              shard_info=shard_info, num_epochs=num_epochs)
    if kind == "paired":
        return ds
    return ds.map(lambda ex, t=cfg.task_id(provider.name): _with_task_ids(ex, t), num_parallel_calls=tf.data.AUTOTUNE)


def model_feature_dataset(cfg: StreamConfig, shard_info: seqio.ShardInfo | None = None,
                          num_epochs: int | None = None) -> tuple[tf.data.Dataset, str]:
    """Unbatched model features (with ``task_ids``) of ``cfg.task``, and its training kind."""
    provider = get_provider(cfg.task)
    kind = training_kind(provider)
    ds = _task_examples(provider, kind, cfg, shard_info, num_epochs)
    if kind == "paired":
        return PairedFeatureConverter(pack=bool(cfg.pack))(ds, paired_lengths(cfg.sequence_lengths)), kind
    return TaskAwareEncDecFeatureConverter(pack=bool(cfg.pack))(ds, with_task_id_lengths(cfg.sequence_lengths)), kind


def sequence_dataset(cfg: StreamConfig, num_epochs: int | None = None) -> tuple[tf.data.Dataset, str]:
    """The whole (unsharded) stream of single sequences ``inputs, targets, task_ids``, unpadded;
    a paired example gives its label sequence, then its rationale sequence."""
    provider = get_provider(cfg.task)
    kind = training_kind(provider)
    ds = _task_examples(provider, kind, cfg, None, num_epochs)
    return (unpair(ds) if kind == "paired" else ds), kind


def sequences_per_step(cfg: StreamConfig, kind: str) -> int:
    """Target sequences of one global step: a paired example has two."""
    return 2 * cfg.batch_size if kind == "paired" else cfg.batch_size


def rows_per_batch(cfg: StreamConfig, kind: str) -> int:
    """Rows of one global batch (fixed unless ``pack="buckets"``)."""
    return 2 * cfg.batch_size if (kind == "paired" and not cfg.pack) else cfg.batch_size


def _cast_batch(batch: Mapping[str, np.ndarray]) -> dict:
    out = {}
    for name, value in batch.items():
        out[name] = value.astype(np.float32) if name == "decoder_loss_weights" else value.astype(np.int32)
    return out


def pack_step(sequences: Sequence[Mapping[str, np.ndarray]], cfg: StreamConfig, row_multiple: int = 1) -> dict:
    """One global bucketed step: its sequences packed by ``dss_jax.packing`` (rows a multiple of
    ``row_multiple``), in the trainer's batch layout."""
    encoder_row_lens, decoder_row_lens = cfg.row_lens()
    task_ids = [int(s["task_ids"][0]) - 1 if len(s["task_ids"]) else losses.LABEL_TASK_ID for s in sequences]
    return _cast_batch(packing.pack([s["inputs"] for s in sequences], [s["targets"] for s in sequences], task_ids,
                                    encoder_row_lens, decoder_row_lens, row_multiple))


def host_rows(batch: Mapping[str, np.ndarray], index: int, count: int) -> dict:
    """Host ``index`` of ``count``'s contiguous slice of a global batch's rows."""
    rows = next(iter(batch.values())).shape[0]
    if rows % count:
        raise ValueError(f"{rows} rows are not divisible by {count} hosts")
    per_host = rows // count
    return {name: value[index * per_host:(index + 1) * per_host] for name, value in batch.items()}


def _bucketed_batches(cfg: StreamConfig, start_batch: int, host: int, num_hosts: int,
                      row_multiple: int) -> tuple[Iterator[dict], str]:
    ds, kind = sequence_dataset(cfg, num_epochs=None)
    per_step = sequences_per_step(cfg, kind)
    if start_batch:
        ds = ds.skip(start_batch * per_step)
    # A fixed prefetch and no autotuning: tf.data's autotuner works in background threads
    # that compete with the step's XLA threads on a small CPU host (docs/speed.md: the
    # trainer's bf16 step on the protocol, 1.51 s with it, 0.85 s without, 0.80 s in the
    # bench script). Packing a step costs milliseconds; two steps ahead is enough.
    options = tf.data.Options()
    options.autotune.enabled = False
    ds = ds.prefetch(2 * per_step).with_options(options)
    multiple = math.lcm(int(row_multiple), int(num_hosts))

    def steps():
        sequences = ds.as_numpy_iterator()
        while True:
            step = list(itertools.islice(sequences, per_step))
            if len(step) < per_step:
                return
            yield host_rows(pack_step(step, cfg, multiple), host, num_hosts)

    return steps(), kind


def train_batches(cfg: StreamConfig, start_batch: int = 0, shard_info: seqio.ShardInfo | None = None,
                  num_hosts: int = 1, row_multiple: int = 1) -> tuple[Iterator[dict], str]:
    """Endless iterator of this host's numpy batches, continuing after ``start_batch`` batches.

    Each host reads its own shard (``shard_info``) and ``rows_per_batch / num_hosts`` rows.
    With ``pack="buckets"`` every host reads the whole stream, packs each global step into a
    multiple of ``row_multiple`` rows (the mesh's data axis) and keeps host
    ``shard_info.index``'s slice of them.
    """
    if cfg.buckets:
        return _bucketed_batches(cfg, start_batch, shard_info.index if shard_info else 0, num_hosts, row_multiple)
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
