"""Setups of the reliability table's run-directory and configuration cases (tests/reliability_cases.py).

Each helper takes the case's fresh work folder ``tmp`` and returns a text saying what
happened, or raises what the code under test raised (``ReportedError`` for an entrypoint
that exited non-zero).  The run directory is ``tmp / "run"``; the entrypoints run
in-process on the shipped ``dss_arith_tiny.gin`` (nothing is trained: every case is
refused, or fails, before a model is built).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys

from checkpoint_damage_support import damages

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_GIN = "dss_arith_tiny.gin"


@contextlib.contextmanager
def _fresh_gin():
    import gin

    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()


def entrypoint(tmp: pathlib.Path, name: str, *flags: str, model_dir: bool = True) -> str:
    """``python -m dss_jax.<name>`` in-process with its usual gin file, MODEL_DIR=tmp/run and ``flags``."""
    from dss_jax.cli import evaluate, infer, train
    from reliability_cases import run_cli

    main, gin_file = {"train": (train.main, TINY_GIN), "eval": (evaluate.main, "runs/eval.gin"),
                      "infer": (infer.main, "runs/infer.gin")}[name]
    argv = [f"--gin_file={gin_file}", *([f"--gin.MODEL_DIR='{tmp / 'run'}'"] if model_dir else []), *flags]
    if name == "infer" and not any(flag.startswith("--gin.OUTPUT") for flag in flags):
        argv.append(f"--gin.OUTPUT='{tmp / 'predictions.jsonl'}'")
    with _fresh_gin():
        return run_cli(main, argv)


def gin_file(tmp: pathlib.Path, text: str) -> str:
    """A gin file that includes the tiny experiment and adds ``text``: its --gin_file flag."""
    path = tmp / "mine.gin"
    path.write_text(f"include '{TINY_GIN}'\n{text}\n")
    return f"--gin_file={path}"


def recorded_run(tmp: pathlib.Path) -> pathlib.Path:
    """tmp/run holding the experiment.json that the tiny experiment's first start records (no training)."""
    import gin

    from dss_jax import experiment, gin_utils, run_dir
    from dss_jax.cli import train  # noqa: F401  (registers the train configurable the gin file binds)

    with _fresh_gin():
        gin_utils.parse_gin([TINY_GIN], [f"MODEL_DIR = '{tmp / 'run'}'"])
        run = gin_utils.run_config()
        recorded = experiment.with_total_steps(gin_utils.experiment_config(), run.train.steps)
        run_dir.RunDir(tmp / "run").record(recorded, run, gin.config_str())
    return tmp / "run"


def _snapshot(directory: pathlib.Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


def refused_rerun(tmp: pathlib.Path, *flags: str) -> str:
    """A rerun of the recorded tiny run with ``flags``: must fail AND leave every file as it was."""
    from reliability_cases import ReportedError

    run = recorded_run(tmp)
    before = _snapshot(run)
    try:
        entrypoint(tmp, "train", *flags)
    except ReportedError:
        if _snapshot(run) != before:
            raise AssertionError(f"the refused rerun changed files in {run}") from None
        raise
    return "the rerun was accepted"


def second_trainer(tmp: pathlib.Path) -> str:
    """The train entrypoint while another process holds tmp/run's lock."""
    script = ("import time\nfrom dss_jax import run_dir\n"
              f"with run_dir.RunDir({str(tmp / 'run')!r}).lock():\n    print('locked', flush=True)\n"
              "    time.sleep(300)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        if holder.stdout.readline().strip() != "locked":
            raise AssertionError("the lock holder did not start")
        return entrypoint(tmp, "train")
    finally:
        holder.kill()
        holder.wait()


def stale_lease(tmp: pathlib.Path, host: str = "another-host") -> str:
    """A gs:// style lease left by a trainer on another host (renewed long ago)."""
    from dss_jax import run_dir

    path = tmp / "run" / run_dir.LOCK_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"host": host, "pid": 4242, "token": "t", "started": 0, "renewed": 0}))
    with run_dir.lease(path, settle_s=0):
        return "the lease was taken"


# ----------------------------------------------------------------------------- checkpoints


def _state(step: int) -> dict:
    import jax.numpy as jnp

    return {"params": {"w": jnp.arange(3000, dtype=jnp.float32) * step}, "step": jnp.asarray(step, jnp.int32)}


DAMAGES = {
    **damages(truncate_to=50),
    "edited_position": lambda step_dir: (step_dir / "data" / "metadata").write_text('{"batches_consumed": 7}'),
}


def damaged_checkpoints(tmp: pathlib.Path, damage: str, damaged=(3,)) -> pathlib.Path:
    """Steps 1-3 of a small state, the steps ``damaged`` damaged by ``damage``: the checkpoint folder."""
    from dss_jax import checkpoints

    manager = checkpoints.CheckpointManager(tmp / "checkpoints", save_every=1, keep=None, async_save=False)
    for step in (1, 2, 3):
        manager.save(step, _state(step), {"batches_consumed": step}, force=True)
    manager.close()
    for step in damaged:
        DAMAGES[damage](tmp / "checkpoints" / str(step))
    return tmp / "checkpoints"


def resume(tmp: pathlib.Path, damage: str, damaged=(3,)) -> str:
    """What the trainer's restore does with damaged steps: "resumed from step N: <what it said>"."""
    import jax

    from dss_jax import checkpoints

    directory = damaged_checkpoints(tmp, damage, damaged)
    said = []
    manager = checkpoints.CheckpointManager(directory, save_every=1, keep=None, async_save=False)
    try:
        _, position, step = manager.restore_latest(jax.eval_shape(lambda: _state(1)), say=said.append)
    finally:
        manager.close()
    kept = sorted(p.name for p in (tmp / "checkpoints_damaged").iterdir())
    return f"resumed from step {step} (position {position['batches_consumed']}): {' '.join(said)}; kept aside: {kept}"


def evaluate_params(tmp: pathlib.Path, damage: str, damaged=(3,), step=None) -> str:
    """What eval/infer's params restore does with damaged steps: "params of step N"."""
    import jax

    from dss_jax import checkpoints

    directory = damaged_checkpoints(tmp, damage, damaged)
    said = []
    _, used = checkpoints.restore_latest_params(directory, jax.eval_shape(lambda: _state(1)["params"]), step,
                                                say=said.append)
    return f"params of step {used}: {' '.join(said)}; steps in place: {sorted(p.name for p in directory.iterdir())}"


# ----------------------------------------------------------------------------- metrics.jsonl


def torn_metrics(tmp: pathlib.Path) -> str:
    """metrics.jsonl whose last line a kill cut short, read back."""
    from dss_jax import metrics_logging

    path = tmp / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + '\n{"kind": "train", "step": 2, "lo')
    return f"{len(metrics_logging.read_metrics(path))} record(s) read"


def redone_steps(tmp: pathlib.Path) -> str:
    """metrics.jsonl of a run killed after logging step 4 and resumed from its step-2 checkpoint."""
    from dss_jax import metrics_logging

    path = tmp / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3, 4)))
    logger = metrics_logging.MetricsLogger(tmp, 4, 2, tensorboard=False, progress_bar=False, drop_after=2)
    for step in (3, 4):
        logger.log_train(step, {"loss": 1.0})
    logger.close()
    records = metrics_logging.read_metrics(path)
    raw = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    return f"steps in the file {raw}; losses {[r['loss'] for r in records]}"


# ----------------------------------------------------------------------------- the other entrypoints


def plan_cli(tmp: pathlib.Path, *flags: str) -> str:
    """``python -m dss_jax.plan --model=t5_1_1_tiny --devices=1`` in-process with ``flags``."""
    from dss_jax.cli import plan
    from reliability_cases import run_cli

    with _fresh_gin():
        return run_cli(plan.main, ["--model=t5_1_1_tiny", "--devices=1", *flags])


def sweep_cli(tmp: pathlib.Path, *flags: str, sweep_dir: bool = True) -> str:
    """``python -m dss_jax.sweep run`` of the shipped miniature, printing launch commands only, with ``flags``."""
    from dss_jax.cli import sweep
    from reliability_cases import run_cli

    argv = ["run", "--gin_file=sweeps/arith_miniature.gin", "--print_launch_commands",
            *([f"--gin.SWEEP_DIR='{tmp / 'sweep'}'"] if sweep_dir else []), *flags]
    with _fresh_gin():
        return run_cli(sweep.main, argv)


def sweep_report(sweep_dir: pathlib.Path) -> str:
    """``python -m dss_jax.sweep report SWEEP_DIR`` in-process."""
    from dss_jax.cli import sweep
    from reliability_cases import run_cli

    return run_cli(sweep.main, ["report", str(sweep_dir)])


def data_cli(tmp: pathlib.Path, *argv: str) -> str:
    """``python -m dss_jax.data ARGV`` in-process."""
    from dss_jax.data.__main__ import main
    from reliability_cases import run_cli

    return run_cli(main, list(argv))
