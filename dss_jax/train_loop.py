"""The training loop of one experiment: build, resume, step, log, evaluate, checkpoint.

``train(experiment, run, model_dir)`` is what ``python -m dss_jax.train`` and the sweep run.
It reads top to bottom:

1. take the run directory's lock, check the experiment against the one recorded there
   (nothing is written when they differ), record it;
2. build the model, optimizer and ``data x model`` mesh (``Components``);
3. start from the newest checkpoint that restores and verifies (state AND data position;
   damaged newer ones are named and moved aside), or from the experiment's initial
   checkpoint, or from an explicit random initialisation; drop the metrics records of the
   steps it will redo;
4. one jitted, donated step per batch; device metrics are fetched only when a log line or
   a checkpoint is due (a NaN/Inf loss stops the run before its state is saved);
5. evaluate the label task(s) every ``eval.every`` steps and at the end (against the gold
   labels), print an accuracy table.

The step itself is ``trainer.make_train_step``: ``(state, batch) -> (state, metrics)``.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

import jax

from dss_jax import checkpoints, evaluation, experiment as experiment_lib, input_pipeline, metrics_logging
from dss_jax import compiled_steps, hardware, partitioning, run_dir, trainer
from dss_jax.model import T5

INIT_SHAPES = ((1, 1), (1, 1))
# Bucketed packing: the batches read ahead, before the first step, to compile their shapes.
COMPILE_LOOKAHEAD = 64


@dataclasses.dataclass
class Components:
    """What one experiment trains with, built once."""

    experiment: experiment_lib.Experiment
    tasks: experiment_lib.TaskSet
    model: T5
    optimizer: Any
    learning_rate_fn: Any
    mesh: Any
    rules: Any
    abstract_state: Any
    state_shardings: Any

    @classmethod
    def build(cls, experiment: experiment_lib.Experiment, mesh_config: experiment_lib.MeshConfig,
              model_config=None) -> "Components":
        """``model_config``: the hardware-resolved model config (default ``experiment.model``)."""
        tasks = experiment.tasks()
        input_pipeline.check_vocabulary_fits(experiment.model.vocab_size, tasks.train)
        model = T5(model_config or hardware.resolve(experiment.model))
        mesh = partitioning.make_mesh(*mesh_config.shape)
        rules = partitioning.logical_axis_rules(fsdp=mesh_config.fsdp)
        optimizer = experiment.optimizer.build()
        abstract, shardings = trainer.abstract_sharded_train_state(
            model, optimizer, jax.random.PRNGKey(experiment.seed), INIT_SHAPES, mesh, rules)
        return cls(experiment, tasks, model, optimizer, experiment.optimizer.learning_rate_fn(), mesh,
                   rules, abstract, shardings)

    def initial_state(self, ckpt: checkpoints.CheckpointManager, stream: input_pipeline.StreamConfig):
        """(state, batches consumed, how it started): resume > initial checkpoint > explicit random."""
        resumed = ckpt.restore_latest(self.abstract_state, say=_say)  # verified; skips damaged steps, says so
        if resumed is not None:
            state, position, step = resumed
            return state, stream.check_position(position), f"resumed from step {step}"
        params = None
        if not self.experiment.random_init:
            from dss_jax import initial_params

            params = initial_params.load_initial_params(self.experiment.initial_checkpoint,
                                                        self.abstract_state.params, self.experiment.model)
        state, _ = trainer.create_sharded_train_state(self.model, self.optimizer, jax.random.PRNGKey(self.experiment.seed),
                                                      INIT_SHAPES, self.mesh, self.rules, params=params)
        return state, 0, ("random initialisation (explicit)" if params is None
                          else f"initial parameters from {self.experiment.initial_checkpoint}")

    def evaluate(self, params, split: str, eval_config: experiment_lib.EvalConfig) -> dict:
        return evaluation.evaluate_tasks(
            self.model, params, self.tasks.eval, split, mesh=self.mesh, rules=self.rules,
            sequence_lengths=self.experiment.input.sequence_lengths, batch_size=eval_config.batch_size,
            max_decode_len=eval_config.max_decode_len, max_examples=eval_config.max_examples)


@dataclasses.dataclass(frozen=True)
class Due:
    """What the loop does after a step."""

    log: bool  # bring the metrics to the host, check them for NaN/Inf, write a line (at every save too)
    save: bool
    eval: bool


def due(step: int, run: experiment_lib.RunConfig, stopping: bool) -> Due:
    last = step == run.train.steps
    save = step % run.checkpoint.every == 0 or last or stopping
    log = step % run.train.log_every == 0 or save  # a line ends at every checkpoint: a resume continues the lines
    evaluate = bool(run.eval.every) and step % run.eval.every == 0 and not (last or stopping)
    return Due(log=log, save=save, eval=evaluate)


def train(experiment: experiment_lib.Experiment, run: experiment_lib.RunConfig, model_dir: str, *,
          gin_text: str | None = None, may_change: Sequence[str] = (), model_config=None) -> dict:
    """Train, evaluate, checkpoint. Returns ``{"step", "model_dir", "eval": {task: metrics}}``."""
    partitioning.maybe_initialize_distributed(run.mesh.multihost)
    experiment = experiment_lib.with_total_steps(experiment, run.train.steps)
    experiment.use_vocabulary()
    experiment.validate_data()  # every split the run will use, before anything is built or written
    directory, is_chief = run_dir.RunDir(model_dir), jax.process_index() == 0
    with directory.lock(is_chief):
        if is_chief:
            directory.record(experiment, run, gin_text, may_change)
        parts = Components.build(experiment, run.mesh, model_config)
        stream = experiment.stream()
        ckpt = checkpoints.CheckpointManager(directory.checkpoints, save_every=run.checkpoint.every,
                                             keep=run.checkpoint.keep, async_save=run.checkpoint.async_save)
        state, consumed, started = parts.initial_state(ckpt, stream)
        step = int(jax.device_get(state.step))
        logger = metrics_logging.MetricsLogger(directory.path, run.train.steps, step, is_chief=is_chief,
                                               tensorboard=run.train.tensorboard, progress_bar=run.train.progress_bar,
                                               drop_after=step)  # records of steps redone after a kill
        logger.message(f"{experiment.describe()}; task {parts.tasks.train} ({parts.tasks.loss_mode} loss), "
                       f"mesh {dict(parts.mesh.shape)}; {started}")
        batches, step_fn, batch_shardings = compiled_input(parts, stream, consumed, run.train.steps - step,
                                                            logger.message)
        meter = metrics_logging.StepMeter(step, trainer.summarize_metrics)
        last_good, final = ckpt.latest_step(), {}
        try:
            with checkpoints.PreemptionGuard() as guard:
                while step < run.train.steps:
                    local = next(batches)
                    state, metrics = step_fn(state, partitioning.make_global_batch(local, batch_shardings))
                    step, consumed = step + 1, consumed + 1
                    meter.add(step, metrics, *input_pipeline.count_examples(local, parts.tasks.kind,
                                                                            jax.process_count()))
                    logger.advance()
                    stopping = guard.triggered  # read once: the signal may arrive at any moment
                    now = due(step, run, stopping)
                    if now.log:  # before any save: no state after a NaN/Inf loss is written
                        meter.check_finite(f"step {last_good} in {directory.checkpoints}" if last_good is not None
                                           else "none saved")
                        logger.log_train(step, meter.line(step, parts.learning_rate_fn(step - 1)))
                    if now.save:
                        ckpt.save(step, state, stream.position(consumed), force=True)
                        last_good = step
                    if stopping:
                        ckpt.wait_until_finished()
                        logger.message(f"received signal {guard.received}: saved checkpoint at step {step}, stopping")
                        break
                    if now.eval:
                        _log_eval(logger, step, parts.evaluate(state.params, run.eval.split, run.eval))
            if step >= run.train.steps:
                final = _log_eval(logger, step, parts.evaluate(state.params, run.eval.final_split, run.eval))
        finally:
            ckpt.close()
            logger.close()
    if final and is_chief:
        print(evaluation.accuracy_table(final, title=f"accuracy after {step} steps ({directory})"), flush=True)
    return {"step": step, "model_dir": str(directory), "eval": {name: r.metrics for name, r in final.items()}}


def compiled_input(parts: Components, stream: input_pipeline.StreamConfig, consumed: int, steps_left: int, log):
    """(this host's batches after ``consumed``, the step compiled for their shapes, batch shardings).

    The shapes of the next ``min(COMPILE_LOOKAHEAD, steps_left)`` batches (bucketed packing;
    else the one fixed shape) are compiled before the first step (``compiled_steps``).
    """
    batches, _ = input_pipeline.train_batches(stream, start_batch=consumed, shard_info=partitioning.host_shard_info(),
                                              num_hosts=jax.process_count(), row_multiple=parts.mesh.shape["data"])
    ahead = list(itertools.islice(batches, max(min(COMPILE_LOOKAHEAD, steps_left), 1) if stream.buckets else 1))
    batch_shardings = partitioning.batch_shardings(parts.mesh, list(ahead[0]))
    step = trainer.make_train_step(parts.model, parts.optimizer, parts.experiment.loss_config(), parts.mesh,
                                   parts.state_shardings, batch_shardings, parts.rules)
    step_fn = compiled_steps.CompiledSteps(step, parts.abstract_state, batch_shardings, parts.mesh, parts.rules, log)
    log(f"compiled the train step for {step_fn.prepare(ahead, jax.process_count())} batch shape(s)")
    return itertools.chain(ahead, batches), step_fn, batch_shardings


def _say(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True)


def _log_eval(logger: metrics_logging.MetricsLogger, step: int, results: dict) -> dict:
    for name, result in results.items():
        logger.log_eval(step, name, result.split, result.metrics, result.num_examples)
    return results
