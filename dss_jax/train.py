"""``python -m dss_jax.train``: the T5X-style training entrypoint of distilling step-by-step.

    python -m dss_jax.train --gin_file=dss_arith_tiny.gin --gin.MODEL_DIR="'/tmp/run'"

The gin files choose the model, the benchmark and the training mode; ``train()`` is the
one configurable.  A run:

1. builds a ``data x model`` mesh (``partitioning``), the T5 model and the optimizer;
2. resumes from the latest complete checkpoint in ``MODEL_DIR/checkpoints`` (state AND
   data position), or starts from random / Hugging Face / another run's params;
3. trains with one jitted, donated step per batch; metrics are fetched from the device
   only every ``log_every`` steps (and before every checkpoint, to check for NaN/Inf);
4. evaluates the label task every ``eval_every`` steps and at the end, prints an
   accuracy table and writes ``MODEL_DIR/metrics.jsonl``.

Training modes (``TRAIN_MODE``): ``step_by_step`` (label + rationale; ``LOSS_MODE``
``paired`` = the reference objective, or ``mixture`` = SeqIO mixture with per-sequence
normalisation), ``standard_finetune``, ``standard_distill``, ``rationale_then_label``.
``--gin.TASK="'name'"`` trains on any registered task or mixture instead.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

import gin

from dss_jax import storage

TRAIN_MODES = ("step_by_step", "standard_finetune", "standard_distill", "rationale_then_label")
STEP_BY_STEP_LOSS_MODES = ("paired", "mixture")
MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINT_SUBDIR = "checkpoints"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; nothing after the last good checkpoint was saved."""


def resolve_task(benchmark: str, train_mode: str, labels: str = "gold", lam: float = 1.0,
                 loss_mode: str = "paired", fraction: float = 1.0, seed: int = 0) -> tuple[str, str, float]:
    """(task or mixture name, loss mode, alpha) for a training mode of a benchmark.

    ``lam`` is the paper's lambda (``L_label + lambda * L_rationale``).  Tasks are
    registered by ``dss_tasks`` (any training fraction / subsample seed).
    """
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"TRAIN_MODE {train_mode!r} is not one of {TRAIN_MODES}")
    if labels not in ("gold", "teacher"):
        raise ValueError(f"LABELS must be 'gold' or 'teacher', got {labels!r}")
    import dss_tasks

    if train_mode in ("standard_finetune", "standard_distill"):
        return dss_tasks.register_task(benchmark, train_mode, None, fraction, seed), "token_mean", 1.0
    if train_mode == "rationale_then_label":
        return dss_tasks.register_task(benchmark, train_mode, labels, fraction, seed), "token_mean", 1.0
    if loss_mode not in STEP_BY_STEP_LOSS_MODES:
        raise ValueError(f"LOSS_MODE {loss_mode!r} is not one of {STEP_BY_STEP_LOSS_MODES}")
    if lam < 0:
        raise ValueError(f"LAMBDA must be >= 0, got {lam}")
    alpha = 1.0 / (1.0 + lam)
    if loss_mode == "paired":
        dss_tasks.register_task(benchmark, "label", labels, fraction, seed)  # evaluated at test time
        return dss_tasks.register_task(benchmark, "paired", labels, fraction, seed), "paired", alpha
    return dss_tasks.register_dss(benchmark, lam=lam, labels=labels, fraction=fraction, seed=seed), \
        "per_sequence", alpha


def check_vocabulary_fits(model_config, task_name: str) -> None:
    """The model's embedding must cover the task's vocabulary (JAX would clamp ids silently)."""
    from dss_jax import input_pipeline

    provider = input_pipeline.get_provider(task_name)
    for name, feature in provider.output_features.items():
        size = feature.vocabulary.vocab_size
        if size > model_config.vocab_size:
            raise ValueError(f"task {task_name} feature {name} uses a vocabulary of {size} ids but the model's "
                             f"vocab_size is {model_config.vocab_size}; set model_config.overrides = "
                             f"{{'vocab_size': {size}}} (or larger)")


def loss_mode_for_kind(kind: str) -> str:
    return {"paired": "paired", "mixture": "per_sequence", "single": "token_mean"}[kind]


def _set_vocab(vocab: str | None) -> None:
    if vocab:
        os.environ["DSS_VOCAB"] = vocab


def write_model_config(model_dir: os.PathLike, config) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / MODEL_CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=1))


def read_model_config(model_dir: str | os.PathLike):
    from dss_jax.configs import T5Config

    path = storage.run_path(model_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the model's gin file, or point at a MODEL_DIR written by "
                                f"python -m dss_jax.train")
    return T5Config(**json.loads(path.read_text()))


@dataclasses.dataclass
class _Pending:
    step: int
    metrics: Any
    examples: int
    sequences: int


def _check_finite(pending: Sequence[_Pending], model_dir: os.PathLike, last_good: int | None):
    """Fetch queued device metrics; raise NonFiniteLossError at the first NaN/Inf loss."""
    from dss_jax import trainer

    out = []
    for item in pending:
        summary = trainer.summarize_metrics(item.metrics)
        if not math.isfinite(summary["loss"]):
            where = f"step {last_good} in {model_dir / CHECKPOINT_SUBDIR}" if last_good is not None else "none saved"
            raise NonFiniteLossError(
                f"training stopped: the loss is {summary['loss']} at step {item.step}; no later state is saved. "
                f"Last good checkpoint: {where}. Lower the learning rate, enable clipping or z-loss, or check "
                f"the data.")
        out.append((item, summary))
    return out


def _mean_summary(summaries: Sequence[Mapping[str, float]]) -> dict:
    """Mean of each metric over the steps since the last log line (keys present in any step)."""
    keys = dict.fromkeys(k for summary in summaries for k in summary)
    return {k: sum(s[k] for s in summaries if k in s) / sum(1 for s in summaries if k in s) for k in keys}


@gin.configurable(denylist=["model_dir_override"])
def train(
    model_dir: str = gin.REQUIRED,
    model_config: Any = gin.REQUIRED,
    benchmark: str = "arith",
    train_mode: str = "step_by_step",
    labels: str = "gold",
    lam: float = 1.0,
    loss_mode: str = "paired",
    fraction: float = 1.0,
    task: str | None = None,
    vocab: str | None = None,
    sequence_lengths: Mapping[str, int] = None,
    batch_size: int = 64,
    train_steps: int = 10000,
    pack: bool = False,
    seed: int = 0,
    optimizer: Any = None,
    z_loss: float = 0.0,
    num_microbatches: int = 1,
    eval_every: int = 250,
    eval_split: str = "validation",
    final_eval_split: str = "test",
    eval_tasks: Sequence[str] | None = None,
    eval_batch_size: int = 64,
    eval_max_examples: int | None = None,
    max_decode_len: int = 64,
    checkpoint_every: int = 1000,
    keep_checkpoints: int | None = 3,
    async_checkpoints: bool = True,
    initial_checkpoint: str | None = None,
    log_every: int = 50,
    mesh_shape: Sequence[int] = (-1, 1),
    fsdp: bool = False,
    multihost: bool | None = None,
    progress_bar: bool = True,
    tensorboard: bool = True,
    model_dir_override: str | None = None,
) -> dict:
    """Train, evaluate, checkpoint. Returns ``{"step", "eval": {task: metrics}, "model_dir"}``.

    batch_size: examples per step (in paired mode each example gives a label and a
      rationale sequence; with ``pack`` it counts packed rows).
    optimizer: a ``trainer.OptimizerConfig`` (gin: ``@OptimizerConfig()``); its
      ``total_steps`` defaults to ``train_steps``.
    eval_every: 0 disables periodic evaluation; the final one runs on ``final_eval_split``.
    mesh_shape: (data, model) sizes, -1 = all remaining devices.
    """
    _set_vocab(vocab)
    import jax

    from dss_jax import checkpoints, evaluation, input_pipeline, losses, metrics_logging, partitioning, trainer
    from dss_jax.model import T5

    model_dir_path = storage.run_path(model_dir_override or model_dir)
    partitioning.maybe_initialize_distributed(multihost)
    is_chief = jax.process_index() == 0
    sequence_lengths = dict(sequence_lengths or {"inputs": 512, "targets": 256})

    # ---- what to train on
    if task:
        train_task = task
        kind = input_pipeline.training_kind(input_pipeline.get_provider(task))
        mode, alpha = loss_mode_for_kind(kind), 1.0 / (1.0 + lam)
    else:
        train_task, mode, alpha = resolve_task(benchmark, train_mode, labels, lam, loss_mode, fraction, seed)
    loss_config = losses.LossConfig(mode=mode, alpha=alpha, z_loss=z_loss, num_microbatches=num_microbatches)
    check_vocabulary_fits(model_config, train_task)
    eval_task_list = list(eval_tasks) if eval_tasks else evaluation.eval_task_names(train_task)

    # ---- model, optimizer, mesh
    optimizer = optimizer or trainer.OptimizerConfig()
    if optimizer.total_steps is None:
        optimizer = dataclasses.replace(optimizer, total_steps=train_steps)
    opt = optimizer.build()
    lr_fn = optimizer.learning_rate_fn()
    model = T5(model_config)
    mesh = partitioning.make_mesh(*mesh_shape)
    rules = partitioning.logical_axis_rules(fsdp=fsdp)
    if is_chief:
        write_model_config(model_dir_path, model_config)
        (model_dir_path / "config.gin").write_text(gin.config_str())

    # ---- state: resume > initial checkpoint > random
    ckpt = checkpoints.CheckpointManager(model_dir_path / CHECKPOINT_SUBDIR, save_every=checkpoint_every,
                                         keep=keep_checkpoints, async_save=async_checkpoints)
    rng = jax.random.PRNGKey(seed)
    init_shapes = ((1, 1), (1, 1))
    init_fn = lambda r: trainer.init_train_state(model, opt, r, init_shapes)  # noqa: E731
    with trainer.sharding_context(mesh, rules):
        abstract_state = jax.eval_shape(init_fn, rng)
        state_shardings = partitioning.state_shardings(abstract_state, model, mesh, rules)
    input_cfg = input_pipeline.InputConfig(task=train_task, sequence_lengths=sequence_lengths, batch_size=batch_size,
                                           pack=pack, seed=seed)
    latest = ckpt.latest_step()
    if latest is not None:
        state, position = ckpt.restore(partitioning.with_sharding(abstract_state, state_shardings), latest)
        batches_consumed = input_cfg.check_position(position)
        resumed_from = latest
    else:
        params = None
        if initial_checkpoint:
            abstract_params = partitioning.with_sharding(abstract_state.params, state_shardings.params)
            params = checkpoints.load_initial_params(initial_checkpoint, abstract_params)
        state, _ = trainer.create_sharded_train_state(model, opt, rng, init_shapes, mesh, rules, params=params)
        batches_consumed = 0
        resumed_from = None
    start_step = int(jax.device_get(state.step))

    logger = metrics_logging.MetricsLogger(model_dir_path, train_steps, start_step, is_chief=is_chief,
                                           tensorboard=tensorboard, progress_bar=progress_bar)
    logger.message(
        f"task {train_task} ({mode} loss, alpha={alpha:.3g}), model {model_config}, mesh {dict(mesh.shape)}, "
        + (f"resumed from step {resumed_from}" if resumed_from is not None else
           f"initial params: {initial_checkpoint or 'random'}"))

    def run_eval(step: int, split: str) -> dict:
        results = evaluation.evaluate_tasks(
            model, state.params, eval_task_list, split, sequence_lengths=sequence_lengths,
            batch_size=eval_batch_size, max_decode_len=max_decode_len, max_examples=eval_max_examples)
        for name, result in results.items():
            logger.log_eval(step, name, split, result.metrics, result.num_examples)
        return results

    batches, kind = input_pipeline.train_batches(input_cfg, start_batch=batches_consumed,
                                                 shard_info=partitioning.host_shard_info(),
                                                 num_hosts=jax.process_count())
    step_fn = None
    pending: list[_Pending] = []
    last_good = latest
    last_log_time, last_log_step = time.time(), start_step
    examples_since_log, sequences_since_log, summaries_since_log = 0, 0, []
    final_results: dict = {}
    step = start_step
    try:
        with checkpoints.PreemptionGuard() as guard:
            while step < train_steps:
                local_batch = next(batches)
                counts = input_pipeline.count_sequences(local_batch)
                if step_fn is None:
                    batch_shardings = partitioning.batch_shardings(mesh, list(local_batch))
                    step_fn = trainer.make_train_step(model, opt, loss_config, mesh, state_shardings,
                                                      batch_shardings, rules)
                global_batch = partitioning.make_global_batch(local_batch, batch_shardings)
                state, metrics = step_fn(state, global_batch)
                step += 1
                batches_consumed += 1
                examples = counts["label"] if kind == "paired" else counts["label"] + counts["rationale"]
                pending.append(_Pending(step, metrics, examples * jax.process_count(),
                                        (counts["label"] + counts["rationale"]) * jax.process_count()))
                logger.advance()
                stop = guard.triggered  # read once: the signal may arrive at any moment
                must_save = step % checkpoint_every == 0 or step == train_steps or stop
                if step % log_every == 0 or must_save or step == train_steps:
                    checked = _check_finite(pending, model_dir_path, last_good)
                    pending = []
                    examples_since_log += sum(item.examples for item, _ in checked)
                    sequences_since_log += sum(item.sequences for item, _ in checked)
                    summaries_since_log += [summary for _, summary in checked]
                    if step % log_every == 0 or step == train_steps:
                        now = time.time()
                        elapsed = max(now - last_log_time, 1e-9)
                        summary = _mean_summary(summaries_since_log)
                        summary["learning_rate"] = float(lr_fn(step - 1))
                        summary["examples_per_sec"] = examples_since_log / elapsed
                        summary["sequences_per_sec"] = sequences_since_log / elapsed
                        summary["steps_per_sec"] = (step - last_log_step) / elapsed
                        logger.log_train(step, summary)
                        last_log_time, last_log_step = now, step
                        examples_since_log, sequences_since_log, summaries_since_log = 0, 0, []
                if must_save:
                    ckpt.save(step, state, input_cfg.position(batches_consumed), force=True)
                    last_good = step
                if stop:
                    ckpt.wait_until_finished()
                    logger.message(f"received signal {guard.received}: saved checkpoint at step {step}, stopping")
                    break
                if eval_every and step % eval_every == 0 and step != train_steps:
                    run_eval(step, eval_split)
            else:
                final_results = run_eval(step, final_eval_split)
    finally:
        ckpt.close()
        logger.close()
    if final_results and is_chief:
        print(evaluation.accuracy_table(final_results, title=f"accuracy after {step} steps ({model_dir_path})"),
              flush=True)
    return {"step": step, "model_dir": str(model_dir_path),
            "eval": {name: r.metrics for name, r in final_results.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils

    gin_utils.parse_command_line("python -m dss_jax.train", __doc__, argv)
    try:
        train()
    except NonFiniteLossError as err:
        print(str(err), file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    from dss_jax import host_memory

    host_memory.reexec_with_huge_pages()
    sys.exit(main())
