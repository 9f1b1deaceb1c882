"""SeqIO tasks and mixtures of distilling step-by-step; importing `dss_tasks` registers them.

For each benchmark `b` in cqa, esnli, anli1, svamp and the embedded `arith`, and label
source `l` in gold, teacher (names as in docs/DESIGN.md):

  dss_{b}_label_{l}                 "predict: x" -> label
  dss_{b}_rationale                 "explain: x" -> teacher rationale
  dss_{b}_standard_finetune         x -> gold label
  dss_{b}_standard_distill          x -> teacher label
  dss_{b}_rationale_then_label_{l}  x -> "rationale So the answer is label" (ablation)
  dss_{b}_paired_{l}                label_inputs/label_targets/rationale_inputs/rationale_targets
  dss_{b}_mix_{l}_lambda{1,0p5,2}   mixture of label and rationale tasks at rates 1 : lambda

and the training-fraction variants `..._frac{12p5,25,50,75}` of all of them.
`register_dss(benchmark, lam, labels, fraction, seed, llm=..., extra_sources=...)`
registers any other combination: `llm="gpt"` (GPT-NeoX teacher outputs) adds `_gpt`,
each augmentation source (`readers.ExtraSource`, e.g. `"svamp:asdiv"`) adds `_aug_<name>`.

Labels: a teacher-label task (`label_teacher`, `standard_distill`,
`rationale_then_label_teacher`, `paired_teacher`, the `mix_teacher` mixtures) trains on
the teacher's label, but its validation and test targets are the gold labels, as in the
reference code: evaluation always scores against gold.

Shuffling: with `shuffle=True` the source draws a seeded random permutation of the
WHOLE split, a fresh one each epoch (epoch e's order is fixed by the seed and e), and
SeqIO adds no shuffle buffer. The stream is deterministic for a seed, so skipping n
batches resumes it exactly; a multi-host shard takes every k-th example of each epoch's
permutation, so shards are disjoint.

Sources read through `dss_jax.data.readers`; the data dir is resolved when a dataset is
built (`set_data_dir`, else $DSS_DATA_DIR), so tasks whose files are absent register and
fail only when built, with the reader's clear error. `arith` reads the embedded benchmark
written once under the cache. `validate_task(name, splits)` reads every split a run
will use up front (`readers.validate_benchmark`). Features: `inputs`, `targets` (EOS appended; vocabulary
chosen by $DSS_VOCAB, see dss_jax.data.vocab), their `_pretokenized` text, and the int32
scalars `example_id` (row index in the split's file) and `task_id` (0 label-type target,
1 rationale target). NLI inputs are tokenised as `prefix premise </s> hypothesis </s>`.

Upstream T5X can use the tasks by importing `dss_tasks` from its gin file.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from dss_jax.data import embedded, metrics, parsing, readers, vocab

BENCHMARKS = ("cqa", "esnli", "anli1", "svamp", "arith")
LABEL_SOURCES = ("gold", "teacher")
LLMS = parsing.LLMS
DEFAULT_LLM = parsing.PALM
STANDARD_LAMBDAS = (1.0, 0.5, 2.0)
STANDARD_FRACTIONS = (1.0, 0.125, 0.25, 0.5, 0.75)
SPLITS = ("train", "validation", "test")
LABEL_PREFIX = "predict: "
RATIONALE_PREFIX = "explain: "
LABEL_TASK_ID = 0
RATIONALE_TASK_ID = 1
EMBEDDED_BENCHMARK = "arith"

_data_dir_override: Optional[pathlib.Path] = None


def set_data_dir(path: Optional[os.PathLike]) -> None:
    """Sets the data dir used by datasets built from now on (None: back to $DSS_DATA_DIR)."""
    global _data_dir_override
    _data_dir_override = pathlib.Path(path) if path is not None else None


def data_dir_for(benchmark: str) -> pathlib.Path:
    """Where `benchmark`'s files are read from at dataset-build time."""
    if benchmark == EMBEDDED_BENCHMARK:
        return embedded.ensure_data_dir()
    return readers.resolve_data_dir(_data_dir_override)


def default_vocab_setting(benchmark: str) -> str:
    return vocab.EMBEDDED_SETTING if benchmark == EMBEDDED_BENCHMARK else vocab.T5_SETTING


# ---------------------------------------------------------------------------- names


def _number_suffix(value: float) -> str:
    return f"{value:g}".replace(".", "p").replace("-", "m")


def lambda_suffix(lam: float) -> str:
    return f"lambda{_number_suffix(lam)}"


def source_suffix(benchmark: str, source: readers.ExtraSource) -> str:
    """`_aug_asdiv` for `svamp:asdiv` of svamp; `_aug_asdiv_train` for `asdiv:train`."""
    name = source.name[len(benchmark) + 1:] if source.benchmark == benchmark else source.name
    return f"_aug_{name}"


def variant_suffix(
    fraction: float = 1.0, seed: int = 0, llm: str = DEFAULT_LLM, extra_sources: Sequence = (), benchmark: str = ""
) -> str:
    """`_gpt` for GPT-NeoX outputs, `_aug_<source>` per extra source, `_frac12p5` for
    fraction 0.125, `_seed3` for a non-zero subsample seed (in that order)."""
    suffix = "" if parsing.check_llm(llm) == DEFAULT_LLM else f"_{llm}"
    suffix += "".join(source_suffix(benchmark, readers.parse_extra_source(s)) for s in extra_sources)
    suffix += "" if fraction == 1.0 else f"_frac{_number_suffix(round(100 * fraction, 6))}"
    return suffix + ("" if seed == 0 else f"_seed{seed}")


def task_name(
    benchmark: str, kind: str, labels: Optional[str] = None, fraction: float = 1.0, seed: int = 0,
    llm: str = DEFAULT_LLM, extra_sources: Sequence = (),
) -> str:
    """The registered name of one task, e.g. `dss_cqa_label_gold_frac25`."""
    middle = kind if labels is None else f"{kind}_{labels}"
    return f"dss_{benchmark}_{middle}{variant_suffix(fraction, seed, llm, extra_sources, benchmark)}"


def mixture_name(
    benchmark: str, labels: str, lam: float, fraction: float = 1.0, seed: int = 0,
    llm: str = DEFAULT_LLM, extra_sources: Sequence = (),
) -> str:
    suffix = variant_suffix(fraction, seed, llm, extra_sources, benchmark)
    return f"dss_{benchmark}_mix_{labels}_{lambda_suffix(lam)}{suffix}"


# ---------------------------------------------------------------------------- source


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Which rows a registered task reads: benchmark, training subsample, teacher, extras."""

    benchmark: str
    fraction: float = 1.0
    seed: int = 0
    llm: str = DEFAULT_LLM
    extra_sources: Tuple[readers.ExtraSource, ...] = ()


_TASK_DATA: Dict[str, TaskData] = {}


@functools.lru_cache(maxsize=64)
def _examples(data_dir: str, data: TaskData, split: str) -> Tuple[readers.Example, ...]:
    return tuple(readers.load_split(
        data.benchmark, split, data_dir, data.fraction, data.seed, llm=data.llm, extra_sources=data.extra_sources,
    ).examples)


def _ragged_segments(examples: Sequence[readers.Example]) -> tf.RaggedTensor:
    """The input segments of every example (7x faster than tf.ragged.constant at 550k rows)."""
    flat = [segment for e in examples for segment in e.input_segments]
    lengths = [len(e.input_segments) for e in examples]
    return tf.RaggedTensor.from_row_lengths(tf.constant(flat, tf.string), tf.constant(lengths, tf.int64))


def _columns(examples: Sequence[readers.Example], split: str) -> Dict[str, tf.Tensor]:
    """The source fields; `distill_label` is the teacher label on train, the gold label elsewhere."""
    train = split == "train"
    return {
        "example_id": tf.constant([e.example_id for e in examples], tf.int32),
        "input_segments": _ragged_segments(examples),
        "gold_label": tf.constant([e.gold_label for e in examples], tf.string),
        "teacher_label": tf.constant([e.teacher_label for e in examples], tf.string),
        "distill_label": tf.constant([e.teacher_label if train else e.gold_label for e in examples], tf.string),
        "teacher_rationale": tf.constant([e.teacher_rationale for e in examples], tf.string),
    }


def permuted_indices(num_examples: int, seed: Optional[int]) -> tf.data.Dataset:
    """0..n-1 in a seeded uniformly random order, a fresh order each time it is iterated.

    A shuffle whose buffer holds the whole split is a uniform permutation; with
    `reshuffle_each_iteration` every epoch (each re-iteration under `repeat`) draws the
    next permutation of a sequence fixed by `seed`.
    """
    indices = tf.data.Dataset.range(num_examples)
    return indices.shuffle(max(num_examples, 1), seed=seed, reshuffle_each_iteration=True)


def _source_dataset(split: str, shuffle_files: bool, seed: Optional[int] = None, *, data: TaskData) -> tf.data.Dataset:
    examples = _examples(str(data_dir_for(data.benchmark)), data, split)
    if not examples:
        raise readers.EmptySplitError(f"{data.benchmark} split {split!r} has no examples. {readers.DATA_DIR_HINT}")
    columns = _columns(examples, split)
    if not shuffle_files:
        return tf.data.Dataset.from_tensor_slices(columns)

    def gather(index):
        return {name: column[index] for name, column in columns.items()}

    return permuted_indices(len(examples), seed).map(gather)


class PermutingDataSource(seqio.FunctionDataSource):
    """An in-memory source that shuffles by itself: a full permutation per epoch.

    Tasks built on it have no SeqIO shuffle buffer (`shuffle_buffer_size=None`). It
    declares no `num_input_examples`, so SeqIO never caches (and so freezes) its order.
    """

    def __init__(self, dataset_fn, splits):
        super().__init__(dataset_fn=dataset_fn, splits=splits)
        self._performs_internal_shuffling = True

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                    shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None, use_cached=False,
                    num_epochs=1) -> tf.data.Dataset:
        del sequence_length, use_cached, num_epochs  # SeqIO's Task repeats and shards after the source
        if shard_info and shard_info.num_shards > 1:
            raise ValueError("PermutingDataSource shards at the examples (seqio.Task does so)")
        return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)


def make_source(data: TaskData) -> PermutingDataSource:
    """The source of every task that reads `data` (train, validation, test)."""
    return PermutingDataSource(functools.partial(_source_dataset, data=data), splits=SPLITS)


def task_data_for(benchmark: str, fraction: float = 1.0, seed: int = 0, llm: str = DEFAULT_LLM,
                  extra_sources: Sequence = ()) -> TaskData:
    """Checked `TaskData` (unknown benchmark, llm, or an incompatible extra source: ValueError)."""
    readers.get_spec(benchmark)
    parsing.check_llm(llm)
    if benchmark == EMBEDDED_BENCHMARK and llm != DEFAULT_LLM:
        raise ValueError(f"the embedded {benchmark!r} benchmark has PaLM-style teacher outputs only (llm='palm')")
    return TaskData(benchmark, fraction, seed, llm, readers.check_extra_sources(benchmark, extra_sources))


def task_data(name: str) -> Tuple[TaskData, ...]:
    """The rows a registered DSS task or mixture reads (one entry per distinct source)."""
    if name in _TASK_DATA:
        return (_TASK_DATA[name],)
    if name in seqio.MixtureRegistry.names():
        found = []
        for task in seqio.get_mixture_or_task(name).tasks:
            for data in task_data(task.name):
                if data not in found:
                    found.append(data)
        return tuple(found)
    raise ValueError(f"{name!r} is not a task or mixture registered by dss_tasks")


def is_dss_task(name: str) -> bool:
    """Whether `name` is a task or mixture whose data `validate_task` can check."""
    try:
        return bool(task_data(name))
    except ValueError:
        return False


def validate_task(name: str, splits: Sequence[str] = SPLITS) -> Dict[str, readers.SplitCheck]:
    """Reads every split of `splits` that task/mixture `name` will use; one clear error if bad.

    Returns {split: readers.SplitCheck} (of the first source; mixtures of DSS tasks
    read one). Raises readers.DataValidationError naming every bad file.
    """
    checks: Dict[str, readers.SplitCheck] = {}
    for data in reversed(task_data(name)):
        checks = readers.validate_benchmark(
            data.benchmark, data_dir_for(data.benchmark), splits, data.fraction, data.seed,
            llm=data.llm, extra_sources=data.extra_sources)
    return checks


# ---------------------------------------------------------------------------- preprocessors


def _with_prefix(prefix: str, segments: tf.Tensor) -> tf.Tensor:
    """Prepends `prefix` to the first segment of the input."""
    if not prefix:
        return segments
    return tf.concat([[tf.strings.join([prefix, segments[0]])], segments[1:]], axis=0)


def _one_segment(text: tf.Tensor) -> tf.Tensor:
    return tf.reshape(text, [1])


def _rationale_then_label(rationale: tf.Tensor, label: tf.Tensor) -> tf.Tensor:
    joined = tf.strings.join([
        tf.strings.strip(rationale), " ", metrics.ANSWER_MARKER, " ", tf.strings.strip(label)
    ])
    return tf.strings.strip(joined)


def _label_field(labels: str) -> str:
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels must be one of {LABEL_SOURCES}, got {labels!r}")
    return "gold_label" if labels == "gold" else "distill_label"


def build_text_features(kind: str, labels: Optional[str]) -> Callable[[Mapping[str, tf.Tensor]], Dict[str, tf.Tensor]]:
    """The per-example map from source fields to `<feature>_segments` text features."""

    def label_example(x, prefix, field, task_id):
        return {
            "example_id": x["example_id"],
            "task_id": tf.constant(task_id, tf.int32),
            "inputs_segments": _with_prefix(prefix, x["input_segments"]),
            "targets_segments": _one_segment(x[field]),
        }

    if kind == "label":
        return lambda x: label_example(x, LABEL_PREFIX, _label_field(labels), LABEL_TASK_ID)
    if kind == "rationale":
        return lambda x: label_example(x, RATIONALE_PREFIX, "teacher_rationale", RATIONALE_TASK_ID)
    if kind == "standard_finetune":
        return lambda x: label_example(x, "", "gold_label", LABEL_TASK_ID)
    if kind == "standard_distill":
        return lambda x: label_example(x, "", "distill_label", LABEL_TASK_ID)
    if kind == "rationale_then_label":
        field = _label_field(labels)
        return lambda x: {
            "example_id": x["example_id"],
            "task_id": tf.constant(LABEL_TASK_ID, tf.int32),
            "inputs_segments": x["input_segments"],
            "targets_segments": _one_segment(_rationale_then_label(x["teacher_rationale"], x[field])),
        }
    if kind == "paired":
        field = _label_field(labels)
        return lambda x: {
            "example_id": x["example_id"],
            "label_inputs_segments": _with_prefix(LABEL_PREFIX, x["input_segments"]),
            "label_targets_segments": _one_segment(x[field]),
            "rationale_inputs_segments": _with_prefix(RATIONALE_PREFIX, x["input_segments"]),
            "rationale_targets_segments": _one_segment(x["teacher_rationale"]),
        }
    raise ValueError(f"unknown task kind {kind!r}")


def join_with_eos(pieces: tf.RaggedTensor, eos_id: int) -> tf.Tensor:
    """Token ids of ragged segments joined by EOS (no trailing EOS: seqio appends it)."""
    separators = tf.fill([pieces.nrows(), 1], tf.constant(eos_id, tf.int32))
    joined = tf.concat([tf.cast(pieces, tf.int32), separators], axis=1).flat_values
    return joined[:-1]


def encode_segments(segments: tf.Tensor, vocabulary: seqio.Vocabulary) -> tf.Tensor:
    """Token ids of the segments joined by EOS: `premise </s> hypothesis` for NLI."""
    return join_with_eos(vocabulary.encode_tf(segments), vocabulary.eos_id)


def tokenize_segments(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
    """Turns every `<feature>_segments` into token ids `<feature>` and text `<feature>_pretokenized`.

    All text features of an example go through one tokenizer call (they share the
    vocabulary), which keeps dataset construction fast.
    """

    def tokenize(example):
        result = {k: v for k, v in example.items() if not k.endswith("_segments")}
        features = [k[: -len("_segments")] for k in example if k.endswith("_segments")]
        vocabularies = {id(output_features[f].vocabulary) for f in features}
        if len(vocabularies) > 1:
            raise ValueError(f"features {features} must share one vocabulary")
        vocabulary = output_features[features[0]].vocabulary
        segments = [example[f"{f}_segments"] for f in features]
        pieces = vocabulary.encode_tf(tf.concat(segments, axis=0))
        start = tf.constant(0, tf.int64)
        for feature, feature_segments in zip(features, segments):
            end = start + tf.shape(feature_segments, out_type=tf.int64)[0]
            result[feature] = join_with_eos(pieces[start:end], vocabulary.eos_id)
            result[f"{feature}_pretokenized"] = tf.strings.reduce_join(feature_segments, separator=readers.EOS_PIECE)
            start = end
        return result

    return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------- registration


def _output_features(benchmark: str, kind: str) -> Dict[str, seqio.Feature]:
    vocabulary = vocab.SettingVocabulary(default_vocab_setting(benchmark))
    names = (
        ("label_inputs", "label_targets", "rationale_inputs", "rationale_targets")
        if kind == "paired"
        else ("inputs", "targets")
    )
    return {name: seqio.Feature(vocabulary=vocabulary, add_eos=True, dtype=tf.int32) for name in names}


def _postprocess_and_metrics(benchmark: str, kind: str):
    if kind == "rationale":
        return metrics.rationale_postprocessor, [metrics.exact_match_accuracy]
    if kind == "rationale_then_label":
        return metrics.label_from_rationale_then_label, [metrics.seqio_metric_fn(benchmark)]
    return metrics.label_postprocessor, [metrics.seqio_metric_fn(benchmark)]


TASK_KINDS: Tuple[Tuple[str, Optional[str]], ...] = (
    ("label", "gold"),
    ("label", "teacher"),
    ("rationale", None),
    ("standard_finetune", None),
    ("standard_distill", None),
    ("rationale_then_label", "gold"),
    ("rationale_then_label", "teacher"),
    ("paired", "gold"),
    ("paired", "teacher"),
)


def register_task(
    benchmark: str, kind: str, labels: Optional[str] = None, fraction: float = 1.0, seed: int = 0,
    llm: str = DEFAULT_LLM, extra_sources: Sequence = (),
) -> str:
    """Registers one task (once) and returns its name.

    `llm`: the teacher whose outputs are read (`palm`, `gpt`). `extra_sources`:
    augmentation sources (`readers.ExtraSource` or `"benchmark:split[:llm]"`) added to the
    training split.
    """
    name = task_name(benchmark, kind, labels, fraction, seed, llm, extra_sources)
    if name in seqio.TaskRegistry.names():
        return name
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    data = task_data_for(benchmark, fraction, seed, llm, extra_sources)
    postprocess_fn, metric_fns = _postprocess_and_metrics(benchmark, kind)
    seqio.TaskRegistry.add(
        name,
        source=make_source(data),
        preprocessors=[
            seqio.map_over_dataset(build_text_features(kind, labels)),
            tokenize_segments,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=_output_features(benchmark, kind),
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
        shuffle_buffer_size=None,  # the source permutes the whole split
    )
    _TASK_DATA[name] = data
    return name


def register_dss(
    benchmark: str, lam: float = 1.0, labels: str = "gold", fraction: float = 1.0, seed: int = 0,
    llm: str = DEFAULT_LLM, extra_sources: Sequence = (),
) -> str:
    """Registers the label/rationale tasks and their 1 : lam mixture; returns the mixture name."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {BENCHMARKS}")
    if not lam > 0:
        raise ValueError(f"lambda must be positive, got {lam}")
    _label_field(labels)
    name = mixture_name(benchmark, labels, lam, fraction, seed, llm, extra_sources)
    label_task = register_task(benchmark, "label", labels, fraction, seed, llm, extra_sources)
    rationale_task = register_task(benchmark, "rationale", None, fraction, seed, llm, extra_sources)
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, [(label_task, 1.0), (rationale_task, float(lam))])
    return name


def register_benchmark(
    benchmark: str, fraction: float = 1.0, seed: int = 0, llm: str = DEFAULT_LLM, extra_sources: Sequence = ()
) -> List[str]:
    """Every task kind and standard mixture of one benchmark/fraction; returns the names."""
    names = [register_task(benchmark, kind, labels, fraction, seed, llm, extra_sources) for kind, labels in TASK_KINDS]
    for labels in LABEL_SOURCES:
        for lam in STANDARD_LAMBDAS:
            names.append(register_dss(benchmark, lam, labels, fraction, seed, llm, extra_sources))
    return names


GPT_BENCHMARKS = ("cqa", "esnli", "anli1", "svamp")  # the reference's --llm gpt benchmarks


def register_all() -> List[str]:
    """The standard names: every benchmark and fraction with PaLM outputs, and the `_gpt`
    variants of the benchmarks the reference ran with GPT-NeoX."""
    names = [
        name
        for benchmark in BENCHMARKS
        for fraction in STANDARD_FRACTIONS
        for name in register_benchmark(benchmark, fraction)
    ]
    names += [
        name
        for benchmark in GPT_BENCHMARKS
        for fraction in STANDARD_FRACTIONS
        for name in register_benchmark(benchmark, fraction, llm=parsing.GPT)
    ]
    return names


REGISTERED_NAMES = tuple(register_all())
