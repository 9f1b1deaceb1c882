"""The sweep (dss_jax.sweeps, dss_jax.sweep_report, python -m dss_jax.sweep): grid, resumable runs, launch, report."""
from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from dss_jax import sweep_report, sweeps

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_LAUNCH = os.path.join(REPO_ROOT, "launch", "example.yaml")


def _grid(**overrides) -> sweeps.Sweep:
    values = dict(models={"tiny": "dss_arith_tiny.gin"}, methods=("step_by_step", "standard_finetune"),
                  fractions=(0.5,), seeds=(0,))
    values.update(overrides)
    return sweeps.Sweep(**values)


# ----------------------------------------------------------------------------- the grid


def test_cells_cross_every_axis_and_give_baselines_no_lambda_axis():
    grid = _grid(methods=("step_by_step", "step_by_step/teacher", "standard_finetune", "standard_distill"),
                 fractions=(0.25, 1.0), lams=(1.0, 2.0), seeds=(0, 1),
                 models={"small": "dss_cqa_small.gin", "base": "dss_cqa_base.gin"})
    cells = grid.cells()
    # per seed, model and fraction: 2 step-by-step label sources x 2 lambdas + 2 baselines
    assert len(cells) == 2 * 2 * 2 * (2 * 2 + 2)
    assert len({c.name for c in cells}) == len(cells)
    assert {c.lam for c in cells if c.method != "step_by_step"} == {None}


def test_cells_run_whole_seeds_first():
    cells = _grid(seeds=(0, 1), fractions=(0.25, 1.0)).cells()
    assert [c.seed for c in cells] == [0] * 4 + [1] * 4


def test_cell_bindings_name_the_experiment_settings():
    teacher = next(c for c in _grid(methods=("step_by_step/teacher",), lams=(2.0,)).cells())
    assert teacher.experiment_bindings() == ['Experiment.method="step_by_step"', "Experiment.fraction=0.5",
                                             "Experiment.seed=0", 'Experiment.labels="teacher"', "Experiment.lam=2.0"]
    distill = next(c for c in _grid(methods=("standard_distill",)).cells())
    assert distill.labels == "teacher" and not any("labels" in b or "lam" in b for b in distill.experiment_bindings())


def test_sweep_bindings_come_before_the_cell_settings():
    cell = _grid(bindings=("TrainConfig.steps = 30",), model_bindings={"tiny": ["InputConfig.batch_size=4"]}).cells()[0]
    assert cell.experiment_bindings()[:2] == ["TrainConfig.steps=30", "InputConfig.batch_size=4"]


@pytest.mark.parametrize("overrides, setting", [
    ({"methods": ("distill_step",)}, "Sweep.methods"),
    ({"methods": ("standard_finetune/teacher",)}, "Sweep.methods"),
    ({"methods": ("step_by_step/silver",)}, "Sweep.methods"),
    ({"fractions": (0.0,)}, "Sweep.fractions"),
    ({"fractions": (0.5, 0.5)}, "Sweep.fractions"),
    ({"seeds": (-1,)}, "Sweep.seeds"),
    ({"lams": (-1.0,)}, "Sweep.lams"),
    ({"models": {}}, "Sweep.models"),
    ({"models": {"a b": "x.gin"}}, "Sweep.models"),
    ({"bindings": ("TrainConfig.steps",)}, "Sweep.bindings"),
    ({"model_bindings": {"base": ["X=1"]}}, "Sweep.model_bindings"),
])
def test_bad_grid_setting_is_refused_naming_it(overrides, setting):
    with pytest.raises(sweeps.SweepError, match=setting.replace(".", r"\.")):
        _grid(**overrides)


def test_time_left_uses_the_mean_of_finished_cells_of_the_same_method():
    cells = _grid(seeds=(0, 1)).cells()  # sbs s0, sf s0, sbs s1, sf s1
    finished = {cells[0].name: 100.0, cells[1].name: 40.0}
    assert sweeps.estimate_seconds_left(cells[2:], finished, cells) == pytest.approx(140.0)
    assert sweeps.estimate_seconds_left(cells[2:], {}, cells) is None


def test_attempt_durations_ignore_an_attempt_that_never_ended():
    events = [{"event": "start", "cell": "a", "time": 0.0}, {"event": "start", "cell": "a", "time": 50.0},
              {"event": "end", "cell": "a", "time": 80.0, "returncode": 0}]
    assert sweeps.durations(events) == {"a": [30.0]}


# ----------------------------------------------------------------------------- launch commands


def test_plain_launch_commands_are_one_trainer_command_per_cell(tmp_path):
    lines = sweeps.launch_commands(_grid(), tmp_path)
    assert len(lines) == 2
    assert all(line.startswith("python3 -m dss_jax.train --gin_file=dss_arith_tiny.gin") for line in lines)
    argv = shlex.split(lines[1])
    assert '--gin.Experiment.method="standard_finetune"' in argv
    assert f"--gin.MODEL_DIR={json.dumps(str(tmp_path / 'cells' / 'standard_finetune_tiny_frac0.5_seed0'))}" in argv


@pytest.mark.parametrize("launcher, module", [("slurm", "dss_launch.slurm"), ("tpu", "dss_launch.tpu")])
def test_launcher_commands_write_a_launch_config_per_cell(tmp_path, launcher, module):
    from dss_launch import config as launch_config

    lines = sweeps.launch_commands(_grid(), tmp_path, launcher=launcher, launch_config=EXAMPLE_LAUNCH)
    assert len(lines) == 2 and all(f"-m {module}" in line for line in lines)
    cell = _grid().cells()[1]
    loaded = launch_config.load_config(tmp_path / "launch" / f"{cell.name}.yaml")
    assert loaded.model_dir == str(tmp_path / "cells" / cell.name)
    assert loaded.gin_file == "dss_arith_tiny.gin"
    assert loaded.gin_bindings[-len(cell.experiment_bindings()):] == tuple(cell.experiment_bindings())
    assert loaded.name == "dss-cqa-xxl-001"


def test_launcher_without_a_launch_config_is_refused():
    with pytest.raises(sweeps.SweepError, match="--launch_config"):
        sweeps.launch_commands(_grid(), "/tmp/unused", launcher="slurm")


# ----------------------------------------------------------------------------- summaries


def _row(method, fraction, seed, accuracy, labels="gold", lam=None, model="tiny", params=10):
    return {"method": method, "labels": labels, "lam": lam, "fraction": fraction, "seed": seed, "model": model,
            "params": params, "test_accuracy": accuracy}


def test_summary_is_mean_and_sample_std_over_seeds():
    rows = [_row("standard_finetune", 0.5, s, a) for s, a in ((0, 40.0), (1, 50.0), (2, 60.0))]
    (summary,) = sweep_report.summarize(rows)
    assert (summary.n, summary.mean, summary.std) == (3, 50.0, 10.0)


def test_markdown_table_has_a_column_per_fraction_and_n():
    rows = [_row("step_by_step", f, 0, 50.0 + f, lam=1.0) for f in (0.25, 1.0)] + [_row("standard_finetune", 1.0, 0, 40.0)]
    table = sweep_report.markdown_table(sweep_report.summarize(rows), teacher_accuracy=85.0)
    assert "| model | method | 25 % of train | 100 % of train |" in table
    assert "| tiny | step-by-step (gold labels) | 50.2 (n=1) | 51.0 (n=1) |" in table
    assert "| tiny | standard finetuning |  | 40.0 (n=1) |" in table
    assert "85.0 %" in table


def test_report_of_an_empty_sweep_directory_says_so(tmp_path):
    with pytest.raises(sweeps.SweepError, match="no finished cell"):
        sweep_report.write_report(tmp_path)


# ----------------------------------------------------------------------------- end to end

TINY_SWEEP = """
SWEEP_DIR = %gin.REQUIRED
sweep.sweep_dir = %SWEEP_DIR
sweep.grid = @Sweep()
Sweep.models = {'tiny': 'dss_arith_tiny.gin'}
Sweep.methods = ['step_by_step', 'standard_finetune']
Sweep.fractions = [0.25]
Sweep.seeds = [0]
Sweep.bindings = ['TrainConfig.steps=40', 'InputConfig.batch_size=4', 'EvalConfig.every=20',
                  'EvalConfig.batch_size=8', 'EvalConfig.max_examples=8', 'CheckpointConfig.every=4',
                  'TrainConfig.log_every=4', 'TrainConfig.progress_bar=False', 'TrainConfig.tensorboard=False']
"""


def _sweep_command(gin_file, sweep_dir):
    return [sys.executable, "-m", "dss_jax.sweep", "run", f"--gin_file={gin_file}",
            f"--gin.SWEEP_DIR={json.dumps(str(sweep_dir))}"]


def _wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _train_records(model_dir):
    return [m for m in sweeps.read_metrics(model_dir) if m.get("kind") == "train"]


def test_killed_sweep_rerun_finishes_every_cell_once_and_report_matches_metrics(tmp_path):
    gin_file, sweep_dir = tmp_path / "tiny_sweep.gin", tmp_path / "sweep"
    gin_file.write_text(TINY_SWEEP)
    first, second = _grid(fractions=(0.25,)).cells()
    first_dir, second_dir = sweep_dir / "cells" / first.name, sweep_dir / "cells" / second.name
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_sweep_command(gin_file, sweep_dir), cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # SIGKILL the sweep while the second cell trains (it has logged, hence checkpointed, a step)
        _wait_for(lambda: _train_records(second_dir) or proc.poll() is not None, 240, "the second cell to train")
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert sweeps.is_finished(first_dir) and not sweeps.is_finished(second_dir)

    rerun = subprocess.run(_sweep_command(gin_file, sweep_dir), cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1/2 cells already finished" in rerun.stdout and "2/2 cells done" in rerun.stdout
    for cell_dir in (first_dir, second_dir):
        finals = [m for m in sweeps.read_metrics(cell_dir) if m.get("kind") == "eval" and m.get("split") == "test"]
        assert len(finals) == 1 and finals[0]["step"] == 40
    assert "resumed from step" in (second_dir / "train.log").read_text()
    starts = [e["cell"] for e in sweeps.SweepDir(sweep_dir).events() if e["event"] == "start"]
    assert starts == [first.name, second.name, second.name]

    report = subprocess.run([sys.executable, "-m", "dss_jax.sweep", "report", str(sweep_dir)], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    with open(sweep_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["cell"] for r in rows) == sorted([first.name, second.name])
    for row in rows:
        metrics = sweeps.read_metrics(row["model_dir"])
        (final,) = [m for m in metrics if m.get("kind") == "eval" and m.get("split") == "test"]
        validation = [m for m in metrics if m.get("kind") == "eval" and m.get("split") == "validation"]
        assert float(row["test_accuracy"]) == final["accuracy"]
        assert float(row["validation_accuracy"]) == validation[-1]["accuracy"]
        assert (row["steps"], row["fraction"], row["seed"]) == ("40", "0.25", "0")
    assert len(json.loads((sweep_dir / "results.json").read_text())["rows"]) == 2
    assert "(n=1)" in (sweep_dir / "results.md").read_text()
    png = (sweep_dir / "figures" / "accuracy_vs_fraction_tiny.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- shipped sweep files


@pytest.mark.parametrize("name, cells", [("arith_miniature.gin", 36), ("paper_training_size.gin", 20),
                                         ("paper_model_size.gin", 12)])
def test_shipped_sweep_file_builds_its_grid_of_existing_experiment_files(name, cells):
    import gin

    from dss_jax import gin_utils
    from dss_jax.cli import sweep as sweep_cli

    gin.clear_config()
    try:
        paths = gin_utils.parse_gin([f"sweeps/{name}"], ["SWEEP_DIR = '/tmp/unused'"])
        _, grid = sweep_cli.sweep()
    finally:
        gin.clear_config()
    assert len(grid.cells()) == cells
    for gin_file in grid.models.values():
        assert os.path.isfile(gin_utils.find_gin_file(gin_file, paths))


def test_miniature_compares_the_three_methods_at_four_fractions_over_three_seeds():
    import gin

    from dss_jax import gin_utils
    from dss_jax.cli import sweep as sweep_cli

    gin.clear_config()
    try:
        gin_utils.parse_gin(["sweeps/arith_miniature.gin"], ["SWEEP_DIR = '/tmp/unused'"])
        _, grid = sweep_cli.sweep()
    finally:
        gin.clear_config()
    assert {sweeps.parse_method(m)[0] for m in grid.methods} == {"step_by_step", "standard_finetune",
                                                                "standard_distill"}
    assert grid.fractions == (0.125, 0.25, 0.5, 1.0) and len(grid.seeds) >= 3


def _write_finished_cell(sweep_dir, cell: sweeps.Cell, model_overrides: dict, accuracy: float, steps: int = 10):
    """A run directory as the trainer leaves it: experiment.json, metrics.jsonl (+ the sweep's cell.json)."""
    from dss_jax import configs, experiment as experiment_lib

    exp = experiment_lib.Experiment(model=configs.get_config("t5_1_1_tiny", **model_overrides),
                                    initial_checkpoint="random", benchmark="arith", method=cell.method,
                                    labels=cell.labels if cell.method in sweeps.METHODS_WITH_LABELS else "gold",
                                    fraction=cell.fraction, seed=cell.seed)
    run = experiment_lib.RunConfig(train=experiment_lib.TrainConfig(steps=steps))
    model_dir = sweeps.SweepDir(sweep_dir).cell_dir(cell)
    model_dir.mkdir(parents=True)
    (model_dir / "experiment.json").write_text(experiment_lib.dumps(exp, run))
    (model_dir / "cell.json").write_text(json.dumps(cell.to_dict()))
    records = [{"kind": "train", "step": steps, "loss": 1.0},
               {"kind": "eval", "step": steps, "task": "t", "split": "test", "num_examples": 3, "accuracy": accuracy}]
    (model_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_draws_accuracy_against_model_size_when_the_sweep_has_several_models(tmp_path):
    grid = sweeps.Sweep(models={"narrow": "a.gin", "wide": "b.gin"}, methods=("step_by_step", "standard_finetune"),
                        fractions=(1.0,), seeds=(0, 1))
    widths = {"narrow": {"d_model": 32}, "wide": {"d_model": 64}}
    for i, cell in enumerate(grid.cells()):
        _write_finished_cell(tmp_path, cell, widths[cell.model], accuracy=10.0 + i)
    written = sweep_report.write_report(tmp_path, say=lambda text: None)
    names = sorted(os.path.basename(p) for p in written["figures"])
    assert names == ["accuracy_vs_fraction_narrow.png", "accuracy_vs_fraction_wide.png",
                     "accuracy_vs_model_size_frac1.png"]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert len(rows) == 8 and rows[0]["params"] < rows[-1]["params"]


def test_unfinished_cell_is_not_in_the_report(tmp_path):
    first, second = _grid().cells()
    _write_finished_cell(tmp_path, first, {}, accuracy=50.0)
    _write_finished_cell(tmp_path, second, {}, accuracy=40.0, steps=10)
    metrics = sweeps.SweepDir(tmp_path).cell_dir(second) / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # no final evaluation yet
    assert [r["cell"] for r in sweep_report.gather_rows(tmp_path)] == [first.name]


def test_run_without_sweep_dir_exits_2_naming_the_setting(capsys):
    import gin

    from dss_jax.cli import sweep as sweep_cli

    gin.clear_config()
    try:
        code = sweep_cli.main(["run", "--gin_file=sweeps/arith_miniature.gin"])
    finally:
        gin.clear_config()
    assert code == 2 and "SWEEP_DIR is not set" in capsys.readouterr().err


def test_report_of_a_missing_directory_exits_2_naming_it(tmp_path, capsys):
    from dss_jax.cli import sweep as sweep_cli

    assert sweep_cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
