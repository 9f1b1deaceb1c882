"""One frozen record of a training run: the ``Experiment`` and the typed configs it is made of.

Everything a run *is* -- benchmark, method, label source, lambda, loss mode, training
fraction, seed, model, optimizer and input settings -- lives in one ``Experiment``.  What a
run merely *does* (how many steps, how often it logs, evaluates and saves, on which mesh)
lives in the ``RunConfig`` beside it.  gin builds both (``gin/runs/finetune.gin``); every
default is written once, here.  ``dss_jax.run_dir`` stores them as ``MODEL_DIR/experiment.json``
at a run's first start; ``eval``, ``infer``, the sweep and the resume check read them back.

Everything derived from an experiment is derived once, here:

* ``Experiment.tasks()`` -> ``TaskSet``: the training task or mixture, the label task(s)
  evaluated at test time (of the run's own fraction and subsample seed), the rationale
  task, which sub-tasks carry rationale targets, and the loss mode;
* ``Experiment.alpha``: the label weight ``1 / (1 + lambda)`` of the paired objective;
* ``Experiment.loss_config()``: the ``losses.LossConfig`` of the train step;
* ``Experiment.stream()``: the input pipeline's ``StreamConfig``.

This module imports no TensorFlow or SeqIO at import time (jax and optax only, through the
optimizer config); ``tasks()`` imports the task
module (``task_module``, ``dss_tasks`` by default) at the edge, as T5X's
``MIXTURE_OR_TASK_MODULE`` does.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Mapping, Sequence

from dss_jax import configs
from dss_jax.trainer import OptimizerConfig

METHODS = ("step_by_step", "standard_finetune", "standard_distill", "rationale_then_label")
STEP_BY_STEP_LOSS_MODES = ("paired", "mixture")
LABEL_SOURCES = ("gold", "teacher")
TEACHER_LLMS = ("palm", "gpt")
PACK_MODES = (False, True, "buckets")
# The reference code truncates inputs at 1024 tokens and targets at 256.
DEFAULT_SEQUENCE_LENGTHS = {"inputs": 1024, "targets": 256}
RANDOM_INIT = "random"
# Settings that may differ between a run and its resumption without changing what is trained.
ALWAYS_RESUMABLE = ("run.",)


class ConfigError(ValueError):
    """A setting has a value the run cannot use; the message names the setting and what it accepts."""


def _require(ok: bool, setting: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{setting} = {value!r} is not valid: expected {accepted}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How training examples become batches.

    sequence_lengths: truncation lengths ``{"inputs", "targets"}``.
    batch_size: examples per step (in paired mode each example gives a label and a
      rationale sequence; with SeqIO packing it counts packed rows).
    pack: False (pad every sequence), True (SeqIO packing) or "buckets" (row-length
      buckets that keep each step's label and rationale sequences together).
    shuffle: each epoch a seeded permutation of the whole training split.
    encoder_row_lens, decoder_row_lens: with ``pack="buckets"``, the row lengths a step's
      sequences are packed into (``dss_jax.packing``); each step takes the pair with the
      least padding.  Empty: one bucket, the sequence length.  The longest must hold the
      longest sequence (``sequence_lengths``), so every step fits.
    """

    sequence_lengths: Mapping[str, int] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SEQUENCE_LENGTHS))
    batch_size: int = 64
    pack: Any = False
    shuffle: bool = True
    encoder_row_lens: tuple[int, ...] = ()
    decoder_row_lens: tuple[int, ...] = ()

    def __post_init__(self):
        lengths = self.sequence_lengths
        _require(isinstance(lengths, Mapping) and set(lengths) == {"inputs", "targets"}
                 and all(_is_int(v) and v > 0 for v in lengths.values()),
                 "InputConfig.sequence_lengths", lengths, "{'inputs': N, 'targets': M} with positive integers")
        object.__setattr__(self, "sequence_lengths", {"inputs": int(lengths["inputs"]),
                                                      "targets": int(lengths["targets"])})
        _require(_is_int(self.batch_size) and self.batch_size > 0, "InputConfig.batch_size", self.batch_size,
                 "a positive integer")
        _require(self.pack in PACK_MODES, "InputConfig.pack", self.pack, f"one of {PACK_MODES}")
        _require(isinstance(self.shuffle, bool), "InputConfig.shuffle", self.shuffle, "True or False")
        for name, length in (("encoder_row_lens", "inputs"), ("decoder_row_lens", "targets")):
            value = getattr(self, name)
            _require(isinstance(value, (list, tuple)) and all(_is_int(v) and v > 0 for v in value),
                     f"InputConfig.{name}", value, "a list of positive row lengths")
            object.__setattr__(self, name, tuple(sorted(set(int(v) for v in value))))
            if not value:
                continue
            _require(self.pack == "buckets", f"InputConfig.{name}", value,
                     f"() unless InputConfig.pack = 'buckets' (pack is {self.pack!r})")
            _require(max(value) >= self.sequence_lengths[length], f"InputConfig.{name}", value,
                     f"lengths whose longest is >= sequence_lengths['{length}'] = "
                     f"{self.sequence_lengths[length]}, so that every sequence fits a row")


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """The SeqIO names an experiment trains and evaluates on (see ``Experiment.tasks``)."""

    train: str
    kind: str  # paired | mixture | single
    eval: tuple[str, ...]
    rationale: str | None  # the "explain: x" task, decoded by infer --RATIONALES
    rationale_tasks: tuple[str, ...]  # training sub-tasks whose targets are rationales (task id 1)
    loss_mode: str  # losses.LOSS_MODES


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What is trained: see the module docstring.  Validated on construction.

    method: ``step_by_step`` (label + rationale), ``standard_finetune`` (x -> gold label),
      ``standard_distill`` (x -> teacher label), ``rationale_then_label`` (ablation).
    labels: the label source of step-by-step / rationale-then-label training (gold | teacher);
      evaluation is always against the gold labels.
    lam: the paper's lambda in ``L_label + lambda * L_rationale``.
    loss_mode: ``paired`` (the reference objective, one batch holds both versions of its
      examples) or ``mixture`` (a SeqIO mixture at rates 1 : lambda, per-sequence loss).
    fraction, seed: the training-set fraction and the seed of its subsample, of the
      shuffling and of the initial parameters.
    llm: which teacher's outputs (``palm``: the paper's PaLM-540B; ``gpt``: GPT-NeoX).
    extra_sources: unlabeled inputs added to the training split, labelled and explained by
      the teacher step (paper section 4.2), e.g. ``("svamp:asdiv",)``: ``benchmark:split``
      files in the ``datasets.zip`` layout; validation and test stay the benchmark's own.
    task: train on any registered SeqIO task or mixture instead of a DSS method; then
      ``eval_tasks`` names the tasks to evaluate and ``rationale_tasks`` the mixture's
      sub-tasks whose targets are rationales.
    vocab: the SentencePiece setting of the DSS tasks (``dss_jax.data.vocab``); None = the
      benchmark's default.
    initial_checkpoint: where step 0's parameters come from (a Hugging Face model id or
      directory, a T5X checkpoint, another run) or ``"random"``; never implicit.
    """

    model: configs.T5Config
    initial_checkpoint: str | None = None
    benchmark: str = "arith"
    method: str = "step_by_step"
    labels: str = "gold"
    lam: float = 1.0
    loss_mode: str = "paired"
    fraction: float = 1.0
    seed: int = 0
    llm: str = "palm"
    extra_sources: tuple[str, ...] = ()
    task: str | None = None
    eval_tasks: tuple[str, ...] | None = None
    rationale_tasks: tuple[str, ...] = ()
    task_module: str = "dss_tasks"
    vocab: str | None = None
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    z_loss: float = 0.0
    num_microbatches: int = 1

    def __post_init__(self):
        _require(isinstance(self.model, configs.T5Config), "Experiment.model", type(self.model).__name__,
                 "a T5Config (gin: Experiment.model = @model_config())")
        _require(isinstance(self.initial_checkpoint, str) and bool(self.initial_checkpoint),
                 "Experiment.initial_checkpoint", self.initial_checkpoint,
                 "a Hugging Face model id or directory, a T5X checkpoint directory, another run's MODEL_DIR, "
                 f"or {RANDOM_INIT!r} for an explicit random initialisation")
        _require(isinstance(self.benchmark, str) and bool(self.benchmark), "Experiment.benchmark", self.benchmark,
                 "a benchmark name: cqa, esnli, anli1, svamp, arith")
        _require(self.method in METHODS, "Experiment.method", self.method, f"one of {METHODS}")
        _require(self.labels in LABEL_SOURCES, "Experiment.labels", self.labels, f"one of {LABEL_SOURCES}")
        _require(_is_number(self.lam) and self.lam >= 0, "Experiment.lam", self.lam, "a number >= 0")
        _require(self.loss_mode in STEP_BY_STEP_LOSS_MODES, "Experiment.loss_mode", self.loss_mode,
                 f"one of {STEP_BY_STEP_LOSS_MODES}")
        if self.method == "step_by_step" and self.loss_mode == "mixture" and self.task is None:
            _require(self.lam > 0, "Experiment.lam", self.lam, "a number > 0 with loss_mode='mixture' "
                     "(lambda is the rationale task's mixture rate)")
        _require(_is_number(self.fraction) and 0 < self.fraction <= 1, "Experiment.fraction", self.fraction,
                 "a number in (0, 1]")
        _require(_is_int(self.seed) and self.seed >= 0, "Experiment.seed", self.seed, "an integer >= 0")
        _require(self.llm in TEACHER_LLMS, "Experiment.llm", self.llm, f"one of {TEACHER_LLMS}")
        _require(self.task is None or (isinstance(self.task, str) and bool(self.task)), "Experiment.task",
                 self.task, "None or a registered SeqIO task / mixture name")
        for name in ("eval_tasks", "rationale_tasks", "extra_sources"):
            value = getattr(self, name)
            if value is None:
                continue
            _require(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
                     f"Experiment.{name}", value, "a list of task names")
            object.__setattr__(self, name, tuple(value))
        if self.task is not None:
            _require(bool(self.eval_tasks), "Experiment.eval_tasks", self.eval_tasks,
                     "the label task(s) to evaluate when Experiment.task is set")
        _require(isinstance(self.optimizer, OptimizerConfig), "Experiment.optimizer", type(self.optimizer).__name__,
                 "an OptimizerConfig (gin: Experiment.optimizer = @OptimizerConfig())")
        _require(isinstance(self.input, InputConfig), "Experiment.input", type(self.input).__name__,
                 "an InputConfig (gin: Experiment.input = @InputConfig())")
        _require(_is_number(self.z_loss) and self.z_loss >= 0, "Experiment.z_loss", self.z_loss, "a number >= 0")
        _require(_is_int(self.num_microbatches) and self.num_microbatches >= 1, "Experiment.num_microbatches",
                 self.num_microbatches, "an integer >= 1")

    # ------------------------------------------------------------------ derived values

    @property
    def alpha(self) -> float:
        """Label weight of the paired objective ``alpha L_label + (1 - alpha) L_rationale``."""
        return 1.0 / (1.0 + float(self.lam))

    @property
    def random_init(self) -> bool:
        return self.initial_checkpoint == RANDOM_INIT

    def tasks(self) -> TaskSet:
        """Registers (once) and names every task the run uses."""
        if self.task is not None:
            return self._custom_tasks()
        dss_tasks = importlib.import_module(self.task_module)
        b, f, s = self.benchmark, self.fraction, self.seed
        extra = {} if self.llm == "palm" else {"llm": self.llm}
        if self.extra_sources:
            extra["extra_sources"] = self.extra_sources

        def register(kind: str, labels: str | None) -> str:
            return dss_tasks.register_task(b, kind, labels, f, s, **extra)

        if self.method in ("standard_finetune", "standard_distill"):
            name = register(self.method, None)
            return TaskSet(name, "single", (name,), None, (), "token_mean")
        if self.method == "rationale_then_label":
            name = register(self.method, self.labels)
            return TaskSet(name, "single", (name,), None, (), "token_mean")
        label, rationale = register("label", self.labels), register("rationale", None)
        if self.loss_mode == "paired":
            return TaskSet(register("paired", self.labels), "paired", (label,), rationale, (), "paired")
        mixture = dss_tasks.register_dss(b, lam=float(self.lam), labels=self.labels, fraction=f, seed=s, **extra)
        return TaskSet(mixture, "mixture", (label,), rationale, (rationale,), "per_sequence")

    def _custom_tasks(self) -> TaskSet:
        if self.task_module:
            importlib.import_module(self.task_module)
        from dss_jax import input_pipeline

        kind = input_pipeline.training_kind(input_pipeline.get_provider(self.task))
        mode = {"paired": "paired", "mixture": "per_sequence", "single": "token_mean"}[kind]
        rationale = self.rationale_tasks[0] if self.rationale_tasks else None
        return TaskSet(self.task, kind, tuple(self.eval_tasks), rationale, tuple(self.rationale_tasks), mode)

    def validate_data(self, splits: Sequence[str] = ("train", "validation", "test")) -> dict:
        """Reads every split the run will use now, before anything is built: a missing,
        truncated, empty or badly encoded file, or an out-of-set gold label, is one error
        naming the file and the setting to fix (``dss_jax.data.readers.DataValidationError``).
        Custom tasks (``task``) are the caller's to check; returns the per-split counts."""
        if self.task is not None:
            return {}
        dss_tasks = importlib.import_module(self.task_module)
        return dss_tasks.validate_task(self.tasks().eval[0], splits=tuple(splits))

    def loss_config(self):
        from dss_jax import losses

        return losses.LossConfig(mode=self.tasks().loss_mode, alpha=self.alpha, z_loss=float(self.z_loss),
                                 num_microbatches=self.num_microbatches)

    def stream(self, split: str = "train"):
        """The input pipeline's ``StreamConfig`` of this experiment's training task."""
        from dss_jax import input_pipeline

        tasks = self.tasks()
        return input_pipeline.StreamConfig(
            task=tasks.train, rationale_tasks=tasks.rationale_tasks, sequence_lengths=self.input.sequence_lengths,
            batch_size=self.input.batch_size, pack=self.input.pack, seed=self.seed, shuffle=self.input.shuffle,
            split=split, encoder_row_lens=self.input.encoder_row_lens, decoder_row_lens=self.input.decoder_row_lens)

    def use_vocabulary(self) -> None:
        """Makes the tasks of this process use the experiment's vocabulary setting."""
        from dss_jax.data import vocab

        vocab.set_vocab_setting(self.vocab)

    def describe(self) -> str:
        """One line for logs: the benchmark, the method and its settings."""
        what = self.task or f"{self.benchmark} {self.method}" + (
            f" ({self.labels} labels, lambda={self.lam:g}, {self.loss_mode})" if self.method == "step_by_step" else "")
        return f"{what}, fraction {self.fraction:g}, seed {self.seed}"

    # ------------------------------------------------------------------ records

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Experiment":
        record = dict(record)
        try:
            model = configs.T5Config(**record.pop("model"))
            optimizer = OptimizerConfig(**record.pop("optimizer", {}))
            inputs = InputConfig(**record.pop("input", {}))
            return cls(model=model, optimizer=optimizer, input=inputs, **record)
        except TypeError as err:
            raise ConfigError(f"not a valid experiment record: unknown or missing settings ({err})") from None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long to train and how often to log (mean over the steps since the last line)."""

    steps: int = 10000
    log_every: int = 50
    progress_bar: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        _require(_is_int(self.steps) and self.steps >= 1, "TrainConfig.steps", self.steps, "an integer >= 1")
        _require(_is_int(self.log_every) and self.log_every >= 1, "TrainConfig.log_every", self.log_every,
                 "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation of the label task(s) by greedy decoding, against the gold labels.

    every: evaluate on ``split`` every this many steps (0: never during training); the
      final evaluation runs on ``final_split``.
    """

    every: int = 250
    split: str = "validation"
    final_split: str = "test"
    batch_size: int = 64
    max_examples: int | None = None
    max_decode_len: int = 64

    def __post_init__(self):
        _require(_is_int(self.every) and self.every >= 0, "EvalConfig.every", self.every, "an integer >= 0")
        for name in ("split", "final_split"):
            _require(getattr(self, name) in ("train", "validation", "test"), f"EvalConfig.{name}",
                     getattr(self, name), "'train', 'validation' or 'test'")
        _require(_is_int(self.batch_size) and self.batch_size >= 1, "EvalConfig.batch_size", self.batch_size,
                 "an integer >= 1")
        _require(self.max_examples is None or (_is_int(self.max_examples) and self.max_examples >= 1),
                 "EvalConfig.max_examples", self.max_examples, "None or an integer >= 1")
        _require(_is_int(self.max_decode_len) and self.max_decode_len >= 1, "EvalConfig.max_decode_len",
                 self.max_decode_len, "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints of (state, data position) in ``MODEL_DIR/checkpoints``."""

    every: int = 1000
    keep: int | None = 3
    async_save: bool = True

    def __post_init__(self):
        _require(_is_int(self.every) and self.every >= 1, "CheckpointConfig.every", self.every, "an integer >= 1")
        _require(self.keep is None or (_is_int(self.keep) and self.keep >= 1), "CheckpointConfig.keep", self.keep,
                 "None (keep all) or an integer >= 1")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """The ``data x model`` device mesh (-1: all remaining devices) and multi-host start-up."""

    shape: tuple[int, int] = (-1, 1)
    fsdp: bool = False
    multihost: bool | None = None

    def __post_init__(self):
        shape = tuple(self.shape) if isinstance(self.shape, (list, tuple)) else self.shape
        _require(isinstance(shape, tuple) and len(shape) == 2 and all(_is_int(v) and (v >= 1 or v == -1)
                                                                       for v in shape),
                 "MeshConfig.shape", self.shape, "(data, model) sizes, each >= 1 or -1")
        object.__setattr__(self, "shape", shape)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How a run proceeds; any of it may change when a run is resumed."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "RunConfig":
        return cls(train=TrainConfig(**record.get("train", {})), eval=EvalConfig(**record.get("eval", {})),
                   checkpoint=CheckpointConfig(**record.get("checkpoint", {})),
                   mesh=MeshConfig(**record.get("mesh", {})))


def with_total_steps(experiment: Experiment, steps: int) -> Experiment:
    """The experiment with its optimizer schedule's ``total_steps`` set (when unset) to ``steps``."""
    if experiment.optimizer.total_steps is not None:
        return experiment
    return dataclasses.replace(experiment, optimizer=dataclasses.replace(experiment.optimizer, total_steps=steps))


def _plain(value: Any) -> Any:
    """JSON-ready copy: tuples become lists, mapping keys strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"learning_rate": 1}}`` -> ``{"optimizer.learning_rate": 1}``."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and key != "sequence_lengths":
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differences(recorded: Mapping[str, Any], new: Mapping[str, Any],
                may_change: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """Settings (dotted names) whose values differ, except those named in ``may_change``.

    A name in ``may_change`` ending in ``.`` allows every setting under it.
    """
    old_flat, new_flat = flatten(_plain(recorded)), flatten(_plain(new))
    allowed = tuple(may_change)

    def is_allowed(name: str) -> bool:
        return any(name == a or (a.endswith(".") and name.startswith(a)) for a in allowed)

    missing = object()
    out = []
    for name in sorted(set(old_flat) | set(new_flat)):
        old, cur = old_flat.get(name, missing), new_flat.get(name, missing)
        if old != cur and not is_allowed(name):
            out.append((name, None if old is missing else old, None if cur is missing else cur))
    return out


def dumps(experiment: Experiment, run: RunConfig) -> str:
    """The text of ``experiment.json``."""
    return json.dumps({"experiment": experiment.to_dict(), "run": run.to_dict()}, indent=1, sort_keys=True) + "\n"


def loads(text: str, source: str = "experiment.json") -> tuple[Experiment, RunConfig]:
    try:
        record = json.loads(text)
        return Experiment.from_dict(record["experiment"]), RunConfig.from_dict(record.get("run", {}))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{source} is not a valid experiment record ({type(err).__name__}: {err})") from None
