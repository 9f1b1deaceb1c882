"""A run directory (MODEL_DIR) cannot be shared or corrupted by accident.

* one trainer at a time: a second one exits 2 naming the holder; a local lock dies with
  its process; a gs:// style lease names its holder, is taken over only from a dead
  process of this host, and is removed at the end;
* a rerun of another experiment is refused with one message listing every difference,
  having written nothing, and the good run still evaluates; ``train.resume_may_change``
  lets named settings change;
* a damaged latest checkpoint makes the trainer resume from the newest good one.

Runs are in-process on the tiny synthetic task of ``trainer_support``; subprocesses only
hold locks.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import trainer_support as support
from dss_jax import checkpoints, run_dir

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO = TESTS_DIR.parent
GOOD = {"TrainConfig.steps": 4, "CheckpointConfig.every": 2, "TrainConfig.log_every": 1}


@pytest.fixture(autouse=True)
def _clean_gin():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def _train_in_process(model_dir, **bindings):
    """``dss_jax.cli.train.train`` of the tiny run with ``bindings`` (gin syntax values)."""
    import gin

    from dss_jax import gin_utils
    from dss_jax.cli import train as train_cli

    gin.clear_config()
    try:
        gin_utils.parse_gin([], [])
        gin.parse_config(support.tiny_run_gin(**{**GOOD, **bindings}) + f"MODEL_DIR = '{model_dir}'\n")
        gin_utils.check_configuration()
        return train_cli.train()
    finally:
        gin.clear_config()


def _train_main(tmp_path, model_dir, **bindings) -> int:
    """``python -m dss_jax.train`` in-process (argument parsing, checks, exit code)."""
    from dss_jax.cli import train as train_cli

    gin_file = tmp_path / "run.gin"
    gin_file.write_text(support.tiny_run_gin(**{**GOOD, **bindings}))
    return train_cli.main([f"--gin_file={gin_file}", f"--gin.MODEL_DIR='{model_dir}'"])


def _snapshot(directory: pathlib.Path) -> dict:
    """Every file's bytes and mtime (the lock file excepted: each start rewrites its holder line)."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != run_dir.LOCK_FILE}


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("good") / "run"
    _train_in_process(model_dir)
    return model_dir


def _copy(run: pathlib.Path, tmp_path) -> pathlib.Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


# ----------------------------------------------------------------------------- the lock


def _hold_lock(model_dir) -> subprocess.Popen:
    """A process holding the run directory's lock until it is killed (prints 'locked' once it holds it)."""
    script = ("import sys, time\nfrom dss_jax import run_dir\n"
              f"with run_dir.RunDir({str(model_dir)!r}).lock():\n"
              "    print('locked', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_trainer_in_the_same_model_dir_exits_2_naming_the_holder(tmp_path, capsys):
    model_dir = tmp_path / "run"
    holder = _hold_lock(model_dir)
    try:
        code = _train_main(tmp_path, model_dir)
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2
    assert f"host {socket.gethostname()} pid {holder.pid}" in err and "in use by another trainer" in err
    assert "Traceback" not in err
    assert not (model_dir / run_dir.EXPERIMENT_FILE).exists(), "the refused trainer wrote nothing"


def test_a_local_lock_dies_with_its_process(tmp_path):
    holder = _hold_lock(tmp_path / "run")
    with pytest.raises(run_dir.RunDirLockedError):
        with run_dir.RunDir(tmp_path / "run").lock():
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_dir.RunDir(tmp_path / "run").lock():  # no stale lock to clean up
        assert f"pid {os.getpid()}" in (tmp_path / "run" / run_dir.LOCK_FILE).read_text()


def test_a_launcher_can_wait_until_the_previous_trainer_has_let_go(tmp_path):
    import threading

    holder = _hold_lock(tmp_path / "run")
    said = []
    threading.Timer(1.0, holder.kill).start()
    run_dir.RunDir(tmp_path / "run").wait_until_free(timeout_s=60, poll_s=0.05, say=said.append)
    holder.wait()
    assert len(said) == 1 and f"pid {holder.pid}" in said[0]
    with pytest.raises(run_dir.RunDirLockedError, match=r"waited 0 s"):
        other = _hold_lock(tmp_path / "run")
        try:
            run_dir.RunDir(tmp_path / "run").wait_until_free(timeout_s=0.2, poll_s=0.05, say=said.append)
        finally:
            other.kill()
            other.wait()


def test_a_lease_names_its_holder_and_refuses_a_second_trainer(tmp_path):
    path = tmp_path / "run" / run_dir.LOCK_FILE
    with run_dir.lease(path, settle_s=0):
        record = json.loads(path.read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        with pytest.raises(run_dir.RunDirLockedError, match=rf"leased by host {socket.gethostname()} "
                                                            rf"pid {os.getpid()}, last renewed \d+ s ago"):
            with run_dir.lease(path, settle_s=0):
                pass
    assert not path.exists(), "the lease is removed when its trainer ends"


def test_of_two_trainers_taking_a_lease_at_the_same_moment_the_overwritten_one_backs_off(tmp_path):
    import threading

    path = tmp_path / run_dir.LOCK_FILE
    rival = {"host": "elsewhere", "pid": 7, "token": "rival", "started": time.time(), "renewed": time.time()}

    def overwrite_during_the_settle():
        while not path.exists():
            time.sleep(0.01)
        path.write_text(json.dumps(rival))  # the other trainer's write lands after ours

    writer = threading.Thread(target=overwrite_during_the_settle)
    writer.start()
    with pytest.raises(run_dir.RunDirLockedError, match="host elsewhere pid 7.*started at the same moment"):
        with run_dir.lease(path, settle_s=0.5):
            pass
    writer.join()
    assert json.loads(path.read_text())["token"] == "rival", "the winner's lease is left alone"


def test_a_lease_is_renewed_while_held(tmp_path):
    path = tmp_path / run_dir.LOCK_FILE
    with run_dir.lease(path, renew_every=0.05, settle_s=0):
        first = json.loads(path.read_text())["renewed"]
        time.sleep(0.5)
        assert json.loads(path.read_text())["renewed"] > first


def test_a_lease_left_by_a_dead_process_of_this_host_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / run_dir.LOCK_FILE
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "old",
                                "started": 0, "renewed": 0}))
    with run_dir.lease(path, settle_s=0):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "taking over the lease" in capsys.readouterr().out


def test_a_lease_of_another_host_is_refused_however_old(tmp_path):
    path = tmp_path / run_dir.LOCK_FILE
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "x", "started": 0, "renewed": 0}))
    with pytest.raises(run_dir.RunDirLockedError, match=rf"host elsewhere pid 1.*looks stale.*delete {path}"):
        with run_dir.lease(path, settle_s=0):
            pass
    assert json.loads(path.read_text())["host"] == "elsewhere", "a refused trainer leaves the lease alone"


# ----------------------------------------------------------------------------- record: refuse first, write nothing

CHANGES = {
    "batch size": ({"InputConfig.batch_size": 8}, "input.batch_size: recorded 4, now 8"),
    "seed": ({"Experiment.seed": 3}, "seed: recorded 0, now 3"),
    "labels": ({"Experiment.labels": "'teacher'"}, "labels: recorded 'gold', now 'teacher'"),
    "lambda": ({"Experiment.lam": 2.0}, "lam: recorded 1.0, now 2.0"),
    "learning rate": ({"OptimizerConfig.learning_rate": 3e-3}, "optimizer.learning_rate: recorded 0.001, now 0.003"),
    "model shape": ({"model_config.overrides": "{'dropout_rate': 0.0, 'd_ff': 48}"}, "model.d_ff: recorded 64"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_rerun_of_another_experiment_is_refused_and_writes_nothing(good_run, change):
    bindings, difference = CHANGES[change]
    before = _snapshot(good_run)
    with pytest.raises(run_dir.ExperimentMismatchError) as refused:
        _train_in_process(good_run, **bindings)
    assert _snapshot(good_run) == before
    assert difference.split(" recorded ")[0] in str(refused.value)


def test_the_refusal_is_one_message_listing_every_difference(tmp_path, good_run, capsys):
    code = _train_main(tmp_path, good_run, **{"InputConfig.batch_size": 8, "Experiment.seed": 3,
                                               "model_config.overrides": "{'dropout_rate': 0.0, 'd_ff': 48}"})
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1
    assert "3 setting(s) differ" in err
    for name in ("input.batch_size", "seed", "model.d_ff"):
        assert f"  {name}: recorded " in err
    assert len(err.splitlines()) < 10


def test_the_good_run_still_evaluates_after_a_refused_rerun_with_another_model(good_run):
    from dss_jax.cli import evaluate as eval_cli

    with pytest.raises(run_dir.ExperimentMismatchError):
        _train_in_process(good_run, **{"model_config.overrides": "{'dropout_rate': 0.0, 'd_model': 48}"})
    (result,) = eval_cli.evaluate_checkpoint(model_dir=str(good_run), split="validation", max_examples=4)
    assert result["step"] == 4 and result["num_examples"] == 4


def test_resume_may_change_lets_the_named_settings_change(tmp_path, good_run):
    run = _copy(good_run, tmp_path)
    with pytest.raises(run_dir.ExperimentMismatchError, match="optimizer.total_steps: recorded 4, now 6"):
        _train_in_process(run, **{"TrainConfig.steps": 6})
    summary = _train_in_process(run, **{"TrainConfig.steps": 6,
                                         "train.resume_may_change": "['optimizer.total_steps']"})
    assert summary["step"] == 6
    assert checkpoints.latest_checkpoint_step(run / "checkpoints") == 6
    assert run_dir.RunDir(run).read_experiment().optimizer.total_steps == 6


# ----------------------------------------------------------------------------- damaged checkpoints in a run


@pytest.fixture(scope="module")
def resumed_past_damage(good_run, tmp_path_factory):
    """The good run with its last checkpoint (step 4) truncated, rerun: (run, truncated file, stdout)."""
    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(good_run, run)
    step_dir = run / "checkpoints" / "4"
    data = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    os.truncate(data, 50)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = _train_in_process(run)
    assert summary["step"] == 4
    return run, data.relative_to(step_dir), out.getvalue()


def test_a_trainer_resumes_from_the_newest_good_checkpoint_and_says_why(resumed_past_damage):
    run, _, out = resumed_past_damage
    assert "resuming from step 2" in out and "step 4: " in out and "cannot be read (ValueError: OUT_OF_RANGE" in out
    assert checkpoints.checkpoint_steps(run / "checkpoints") == [2, 4]


def test_the_damaged_checkpoint_is_kept_intact_beside_the_run(resumed_past_damage):
    run, truncated, _ = resumed_past_damage
    assert (run / "checkpoints_damaged" / "4" / truncated).stat().st_size == 50


def test_metrics_show_each_step_once_with_the_values_of_the_run_that_survived(resumed_past_damage):
    from dss_jax import metrics_logging

    run, _, _ = resumed_past_damage
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["first_step"] for r in train] == [1, 2, 3, 4]
    superseded = [json.loads(line) for line in (run / "metrics.jsonl.superseded").read_text().splitlines()]
    assert sorted({r["step"] for r in superseded}) == [3, 4], "the dead run's records of steps 3-4 are set aside"
    evals = [(r["step"], r["task"], r["split"]) for r in lines if r["kind"] == "eval"]
    assert len(evals) == len(set(evals))
    assert metrics_logging.read_metrics(run) == lines


@pytest.fixture(scope="module")
def stopped_by_sigterm_then_resumed(tmp_path_factory):
    """A run stopped by SIGTERM after its first log line, then resumed for 5 more steps: (run, stop step)."""
    import threading

    run = tmp_path_factory.mktemp("sigterm") / "run"
    settings = {"TrainConfig.steps": 100000, "OptimizerConfig.total_steps": 100000, "CheckpointConfig.every": 1000,
                "TrainConfig.log_every": 4}
    metrics = run / "metrics.jsonl"

    def stop_after_the_first_line():
        deadline = time.time() + 600
        while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # outside the trainer's guard a SIGTERM does nothing
    try:
        killer = threading.Thread(target=stop_after_the_first_line, daemon=True)
        killer.start()
        stopped = _train_in_process(run, **settings)["step"]
        killer.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert 4 <= stopped < 1000, "the stop came from the signal"
    assert _train_in_process(run, **{**settings, "TrainConfig.steps": stopped + 5})["step"] == stopped + 5
    return run, stopped


def test_the_first_line_after_a_sigterm_resume_averages_only_the_resumed_steps(stopped_by_sigterm_then_resumed):
    from dss_jax import metrics_logging

    run, stopped = stopped_by_sigterm_then_resumed
    train = [r for r in metrics_logging.read_metrics(run) if r["kind"] == "train"]
    first_resumed = next(r for r in train if r["step"] > stopped)
    assert first_resumed["first_step"] == stopped + 1
    assert any(r["step"] == stopped for r in train), "the stopping run logs the steps it saved"


def test_the_lines_of_a_stopped_and_resumed_run_cover_each_step_once(stopped_by_sigterm_then_resumed):
    from dss_jax import metrics_logging

    run, stopped = stopped_by_sigterm_then_resumed
    train = [r for r in metrics_logging.read_metrics(run) if r["kind"] == "train"]
    covered = [step for r in train for step in range(r["first_step"], r["step"] + 1)]
    assert covered == list(range(1, stopped + 6))
