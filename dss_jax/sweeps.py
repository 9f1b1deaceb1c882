"""Sweeps: a grid of ordinary training runs, run resumably, gathered into the paper's tables and figures.

A ``Sweep`` is a grid over methods (``step_by_step`` with gold or teacher labels,
``standard_finetune``, ``standard_distill``, ``rationale_then_label``) x training
fractions x model configs x lambda x seeds.  Each ``Cell`` of the grid is one ordinary
``python -m dss_jax.train`` run of the model's experiment gin file plus the cell's bindings
(``--gin.Experiment.method=...``, ``--gin.Experiment.fraction=...``, ...), with its own
``MODEL_DIR`` under the sweep directory, where the trainer records its settings
(``experiment.json``) and results (``metrics.jsonl``).

Layout of a sweep directory::

    SWEEP_DIR/sweep.json              the grid and its cells (written by ``run``)
    SWEEP_DIR/journal.jsonl           one line per cell start / end (time, exit code)
    SWEEP_DIR/cells/<cell>/           the cell's MODEL_DIR (+ cell.json, train.log)
    SWEEP_DIR/jax_cache/              JAX's persistent compilation cache, shared by the cells
    SWEEP_DIR/results.{csv,json,md}   written by ``report``
    SWEEP_DIR/figures/*.png           written by ``report``

Running (``run_sweep``) is resumable: a cell whose ``metrics.jsonl`` holds its final
evaluation (split ``EvalConfig.final_split`` at step ``TrainConfig.steps``) is skipped;
any other cell is (re)started, and the trainer resumes it from its own latest checkpoint.
A cell's trainer gets SIGTERM when the sweep process dies (even by SIGKILL), so it saves a
checkpoint and stops; a rerun waits for it to let go of its run directory.

The report (tables and figures) is ``dss_jax.sweep_report``; it reads only the sweep directory.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from dss_jax import storage

STEP_BY_STEP = "step_by_step"
METHODS_WITH_LABELS = ("step_by_step", "rationale_then_label")
METHODS = ("step_by_step", "standard_finetune", "standard_distill", "rationale_then_label")
LABEL_SOURCES = ("gold", "teacher")
# The label source each baseline trains on (for the report's "labels" column).
BASELINE_LABELS = {"standard_finetune": "gold", "standard_distill": "teacher"}
SWEEP_FILE = "sweep.json"
JOURNAL_FILE = "journal.jsonl"
CELLS_SUBDIR = "cells"
CELL_FILE = "cell.json"
CELL_LOG = "train.log"
COMPILATION_CACHE_SUBDIR = "jax_cache"
FIGURES_SUBDIR = "figures"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
    """A sweep setting or sweep directory the sweep cannot use; the message names it and the fix."""


# ----------------------------------------------------------------------------- the grid


def parse_method(spec: str) -> tuple[str, str]:
    """``"step_by_step"`` -> (step_by_step, gold); ``"step_by_step/teacher"``; ``"standard_distill"``."""
    method, _, labels = str(spec).partition("/")
    if method not in METHODS:
        raise SweepError(f"Sweep.methods: {spec!r} is not a method; expected one of {METHODS}, "
                         f"optionally with '/gold' or '/teacher' for {METHODS_WITH_LABELS}")
    if method in METHODS_WITH_LABELS:
        labels = labels or "gold"
        if labels not in LABEL_SOURCES:
            raise SweepError(f"Sweep.methods: {spec!r} has label source {labels!r}; expected one of {LABEL_SOURCES}")
        return method, labels
    if labels:
        raise SweepError(f"Sweep.methods: {spec!r}: {method} takes no label source (it trains on "
                         f"{BASELINE_LABELS[method]} labels by definition)")
    return method, BASELINE_LABELS[method]


def _check_binding(setting: str, binding: str) -> str:
    if not isinstance(binding, str) or "=" not in binding or not binding.split("=", 1)[0].strip():
        raise SweepError(f"{setting}: {binding!r} is not a gin binding of the form NAME=VALUE "
                         f"(e.g. 'TrainConfig.steps=300')")
    name, value = binding.split("=", 1)
    return f"{name.strip()}={value.strip()}"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The grid (gin: ``Sweep.*``, see ``gin/sweeps/*.gin``).

    models: model name -> the experiment gin file its cells train with (e.g.
      ``{'base': 'dss_cqa_base.gin', 'large': 'dss_cqa_large.gin'}``); the name labels the
      results, the file sets the model, benchmark and everything else.
    methods: method specs, ``step_by_step`` (gold labels), ``step_by_step/teacher``,
      ``standard_finetune``, ``standard_distill``, ``rationale_then_label[/teacher]``.
    fractions: training-set fractions in (0, 1].
    lams: the lambdas of step-by-step cells (the other methods have no lambda: one cell each).
    seeds: the seeds (subsample, shuffling and initial parameters).
    bindings: gin bindings ``NAME=VALUE`` added to every cell (e.g. ``TrainConfig.steps=300``).
    model_bindings: model name -> bindings added to that model's cells.
    compilation_cache: share JAX's persistent compilation cache between the cells run here
      (``SWEEP_DIR/jax_cache``; cells with the same shapes compile once).
    """

    models: Mapping[str, str]
    methods: tuple[str, ...] = ("step_by_step", "standard_finetune", "standard_distill")
    fractions: tuple[float, ...] = (1.0,)
    lams: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] = (0,)
    bindings: tuple[str, ...] = ()
    model_bindings: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    compilation_cache: bool = True

    def __post_init__(self):
        if not isinstance(self.models, Mapping) or not self.models:
            raise SweepError("Sweep.models: expected {model name: experiment gin file}, e.g. "
                             "{'base': 'dss_cqa_base.gin'}")
        for name, gin_file in self.models.items():
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                raise SweepError(f"Sweep.models: model name {name!r} must be letters, digits, '_', '.', '-'")
            if not isinstance(gin_file, str) or not gin_file:
                raise SweepError(f"Sweep.models[{name!r}]: {gin_file!r} is not a gin file name")
        object.__setattr__(self, "models", dict(self.models))
        for setting in ("methods", "fractions", "lams", "seeds"):
            value = getattr(self, setting)
            if not isinstance(value, (list, tuple)) or not value:
                raise SweepError(f"Sweep.{setting}: expected a non-empty list, got {value!r}")
            if len(set(value)) != len(value):
                raise SweepError(f"Sweep.{setting}: {value!r} lists a value twice")
            object.__setattr__(self, setting, tuple(value))
        for spec in self.methods:
            parse_method(spec)
        for fraction in self.fractions:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise SweepError(f"Sweep.fractions: {fraction!r} is not a number in (0, 1]")
        for lam in self.lams:
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
                raise SweepError(f"Sweep.lams: {lam!r} is not a number >= 0")
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise SweepError(f"Sweep.seeds: {seed!r} is not an integer >= 0")
        object.__setattr__(self, "bindings", tuple(_check_binding("Sweep.bindings", b) for b in self.bindings))
        extra = {}
        for name, bindings in dict(self.model_bindings).items():
            if name not in self.models:
                raise SweepError(f"Sweep.model_bindings: {name!r} is not one of Sweep.models {list(self.models)}")
            extra[name] = tuple(_check_binding(f"Sweep.model_bindings[{name!r}]", b) for b in bindings)
        object.__setattr__(self, "model_bindings", extra)

    def cells(self) -> list["Cell"]:
        """Every cell, seeds outermost: a sweep stopped early has whole seeds of the grid."""
        out = []
        for seed in self.seeds:
            for model, gin_file in self.models.items():
                for fraction in self.fractions:
                    for spec in self.methods:
                        method, labels = parse_method(spec)
                        for lam in (self.lams if method == STEP_BY_STEP else (None,)):
                            out.append(Cell(method=method, labels=labels, model=model, fraction=float(fraction),
                                            lam=None if lam is None else float(lam), seed=int(seed),
                                            gin_file=gin_file,
                                            bindings=self.bindings + self.model_bindings.get(model, ())))
        return out

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    method: str
    labels: str
    model: str
    fraction: float
    lam: float | None
    seed: int
    gin_file: str
    bindings: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Directory name, e.g. ``step_by_step-gold_tiny_frac0.25_lam1_seed0``."""
        method = f"{self.method}-{self.labels}" if self.method in METHODS_WITH_LABELS else self.method
        lam = "" if self.lam is None else f"_lam{self.lam:g}"
        return f"{method}_{self.model}_frac{self.fraction:g}{lam}_seed{self.seed}"

    @property
    def group(self) -> tuple:
        """What the seeds of a table row share."""
        return (self.model, self.method, self.labels, self.lam)

    def experiment_bindings(self) -> list[str]:
        """``NAME=VALUE`` bindings of this cell (after the sweep's own, so they win)."""
        out = list(self.bindings) + [f"Experiment.method={json.dumps(self.method)}",
                                     f"Experiment.fraction={self.fraction!r}", f"Experiment.seed={self.seed!r}"]
        if self.method in METHODS_WITH_LABELS:
            out.append(f"Experiment.labels={json.dumps(self.labels)}")
        if self.lam is not None:
            out.append(f"Experiment.lam={self.lam!r}")
        return out

    def describe(self) -> str:
        lam = "" if self.lam is None else f", lambda {self.lam:g}"
        return (f"{self.method} ({self.labels} labels) {self.model}, fraction {self.fraction:g}{lam}, "
                f"seed {self.seed}")

    def to_dict(self) -> dict:
        return {**json.loads(json.dumps(dataclasses.asdict(self))), "name": self.name}


# ----------------------------------------------------------------------------- a sweep directory


class SweepDir:
    """Paths of one sweep directory (local or ``gs://``)."""

    def __init__(self, path: str | os.PathLike):
        if path is None or (isinstance(path, str) and not path.strip()):
            raise SweepError("SWEEP_DIR is not set: pass --gin.SWEEP_DIR=\"'/path/to/sweep'\"")
        self.path = storage.run_path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def sweep_file(self):
        return self.path / SWEEP_FILE

    @property
    def journal(self):
        return self.path / JOURNAL_FILE

    def cell_dir(self, cell: Cell | str):
        return self.path / CELLS_SUBDIR / (cell if isinstance(cell, str) else cell.name)

    def cell_dirs(self) -> list:
        root = self.path / CELLS_SUBDIR
        return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name) if root.exists() else []

    def write_sweep(self, sweep: Sweep) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"sweep": sweep.to_dict(), "cells": [c.to_dict() for c in sweep.cells()]}
        self.sweep_file.write_text(json.dumps(record, indent=1) + "\n")

    def log_event(self, event: Mapping[str, Any]) -> None:
        """Append one line to the journal (rewritten whole on cloud storage)."""
        line = json.dumps({"time": time.time(), **event}) + "\n"
        if storage.is_remote(self.journal):
            old = self.journal.read_text() if self.journal.exists() else ""
            self.journal.write_text(old + line)
            return
        with open(os.fspath(self.journal), "a", encoding="utf-8") as f:
            f.write(line)

    def events(self) -> list[dict]:
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                out.append(json.loads(line))
        return out


def read_metrics(model_dir) -> list[dict]:
    """The records of a run's metrics.jsonl, each step once ([] when there is none yet)."""
    from dss_jax import metrics_logging

    path = storage.run_path(model_dir) / metrics_logging.METRICS_FILE
    return metrics_logging.read_metrics(path) if path.exists() else []


def read_run_record(model_dir) -> dict | None:
    """The run's ``experiment.json`` as a dict (None before the trainer's first start)."""
    path = storage.run_path(model_dir) / "experiment.json"
    return json.loads(path.read_text()) if path.exists() else None


def final_evals(record: Mapping[str, Any] | None, metrics: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The final evaluation records (split ``final_split`` at step >= ``steps``); [] when not finished."""
    if record is None:
        return []
    run = record.get("run", {})
    steps = run.get("train", {}).get("steps")
    split = run.get("eval", {}).get("final_split", "test")
    if steps is None:
        return []
    finals = [m for m in metrics if m.get("kind") == "eval" and m.get("split") == split and m.get("step", -1) >= steps]
    if not finals:
        return []
    last = max(m["step"] for m in finals)
    return [m for m in finals if m["step"] == last]


def is_finished(model_dir) -> bool:
    """True when the run in ``model_dir`` has its final evaluation in metrics.jsonl."""
    return bool(final_evals(read_run_record(model_dir), read_metrics(model_dir)))


# ----------------------------------------------------------------------------- running


def train_argv(cell: Cell, model_dir: str, python: str = sys.executable,
               search_paths: Sequence[str] = ()) -> list[str]:
    """The cell's ``python -m dss_jax.train`` command line."""
    argv = [python, "-m", "dss_jax.train", f"--gin_file={cell.gin_file}",
            f"--gin.MODEL_DIR={json.dumps(str(model_dir))}"]
    if search_paths:
        argv.append(f"--gin_search_paths={','.join(search_paths)}")
    return argv + [f"--gin.{b}" for b in cell.experiment_bindings()]


def durations(events: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Cell name -> wall seconds of each of its attempts that ran to its end (a start, then its end)."""
    started: dict[str, float] = {}
    out: dict[str, list[float]] = {}
    for event in events:
        name = event.get("cell")
        if event.get("event") == "start":
            started[name] = event["time"]
        elif event.get("event") == "end" and name in started:
            out.setdefault(name, []).append(event["time"] - started.pop(name))
    return out


def estimate_seconds_left(remaining: Sequence[Cell], finished_seconds: Mapping[str, float],
                          cells: Sequence[Cell]) -> float | None:
    """Remaining cells x the mean time of finished cells of the same method and model.

    Falls back to the mean over all finished cells; None when no cell has finished yet.
    ``finished_seconds``: cell name -> its wall time.
    """
    by_name = {c.name: c for c in cells}
    timed = [(by_name[n], s) for n, s in finished_seconds.items() if n in by_name]
    if not timed:
        return None
    overall = statistics.fmean(s for _, s in timed)
    total = 0.0
    for cell in remaining:
        same = [s for c, s in timed if (c.method, c.model) == (cell.method, cell.model)]
        total += statistics.fmean(same) if same else overall
    return total


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(index: int, total: int, cell: Cell, done: int, seconds_left: float | None) -> str:
    return (f"[sweep {index}/{total}] {cell.name}: {cell.describe()} -- {done}/{total} cells done, "
            f"about {format_duration(seconds_left)} left")


def _prctl():
    """libc's ``prctl`` (Linux), looked up in the parent: the forked child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: the child gets SIGTERM when the sweep process dies (Linux), even by SIGKILL.

    The trainer takes SIGTERM as a preemption: it saves a checkpoint and stops.
    """
    prctl, pr_set_pdeathsig = _prctl(), 1

    def preexec() -> None:
        if prctl is not None:
            prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent_pid:  # the sweep died before prctl took effect
            os._exit(1)

    return preexec


@dataclasses.dataclass
class RunOutcome:
    """What ``run_sweep`` did."""

    ran: list[str]
    skipped: list[str]
    failed: list[str]
    interrupted: bool = False


def _run_cell(argv: Sequence[str], log_path, env: Mapping[str, str], stop: dict) -> int:
    """Run one trainer, its output appended to ``log_path``; SIGTERM/SIGINT of the sweep stops it cleanly."""
    with open(os.fspath(log_path), "ab") as log:
        log.write(f"\n$ {shlex.join(argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                                 start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        stop["child"] = child
        try:
            return child.wait()
        finally:
            stop["child"] = None


@contextlib.contextmanager
def _forward_stop_signals(stop: dict):
    """SIGTERM / SIGINT of the sweep: ask the running trainer to save and stop, then stop the sweep."""
    if sys.platform == "win32" or threading_is_not_main():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        stop["signal"] = signum
        child = stop.get("child")
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def threading_is_not_main() -> bool:
    import threading

    return threading.current_thread() is not threading.main_thread()


def cell_environment(directory: SweepDir, sweep: Sweep, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The trainers' environment: ours, plus the shared compilation cache when enabled."""
    env = dict(os.environ if base is None else base)
    if sweep.compilation_cache and not storage.is_remote(directory.path):
        env.setdefault("JAX_COMPILATION_CACHE_DIR", os.fspath(directory.path / COMPILATION_CACHE_SUBDIR))
    return env


def run_sweep(sweep: Sweep, sweep_dir, *, search_paths: Sequence[str] = (), keep_going: bool = False,
              python: str = sys.executable, say: Callable[[str], None] = print,
              clock: Callable[[], float] = time.time) -> RunOutcome:
    """Run every unfinished cell, one after another (see the module docstring)."""
    directory = SweepDir(sweep_dir)
    if storage.is_remote(directory.path):
        raise SweepError(f"SWEEP_DIR {sweep_dir} is on cloud storage: run the cells where it is reachable with "
                         f"--print_launch_commands, then `report` it")
    cells = sweep.cells()
    directory.write_sweep(sweep)
    env = cell_environment(directory, sweep)
    past = durations(directory.events())
    seconds = {name: sum(d) for name, d in past.items()}
    done = [c for c in cells if is_finished(directory.cell_dir(c))]
    outcome = RunOutcome(ran=[], skipped=[c.name for c in done], failed=[])
    if done:
        say(f"[sweep] {len(done)}/{len(cells)} cells already finished in {directory}: skipped")
    todo = [c for c in cells if c.name not in outcome.skipped]
    stop: dict = {}
    with _forward_stop_signals(stop):
        for i, cell in enumerate(todo):
            if stop.get("signal") is not None:  # a stop request between two cells
                outcome.interrupted = True
                break
            model_dir = directory.cell_dir(cell)
            finished_now = {n: s for n, s in seconds.items() if n in outcome.skipped or n in outcome.ran}
            say(progress_line(len(outcome.skipped) + len(outcome.ran) + len(outcome.failed) + 1, len(cells), cell,
                              len(outcome.skipped) + len(outcome.ran),
                              estimate_seconds_left(todo[i:], finished_now, cells)))
            code, elapsed = _attempt(directory, cell, train_argv(cell, str(model_dir), python, search_paths), env,
                                     stop, say, clock)
            if stop.get("signal") is not None:
                say(f"[sweep] stopped by signal {stop['signal']} during {cell.name} (its trainer exited with {code}; "
                    f"rerun the same command to continue)")
                outcome.interrupted = True
                break
            if code == 0 and is_finished(model_dir):
                seconds[cell.name] = seconds.get(cell.name, 0.0) + elapsed
                outcome.ran.append(cell.name)
                say(f"[sweep] {cell.name} finished in {format_duration(elapsed)}: "
                    f"{_accuracy_summary(model_dir)}")
                continue
            outcome.failed.append(cell.name)
            say(f"[sweep] {cell.name} FAILED (exit code {code}); last lines of {model_dir / CELL_LOG}:\n"
                + _tail(model_dir / CELL_LOG))
            if not keep_going:
                break
    remaining = len(cells) - len(outcome.skipped) - len(outcome.ran)
    say(f"[sweep] {len(outcome.skipped) + len(outcome.ran)}/{len(cells)} cells done"
        + (f", {remaining} not done" if remaining else "") + f"; report: python -m dss_jax.sweep report {directory}")
    return outcome


def _attempt(directory: SweepDir, cell: Cell, argv: Sequence[str], env: Mapping[str, str], stop: dict,
             say: Callable[[str], None], clock: Callable[[], float]) -> tuple[int, float]:
    """One start of a cell's trainer, journaled: (exit code, wall seconds)."""
    model_dir = directory.cell_dir(cell)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / CELL_FILE).write_text(json.dumps(cell.to_dict(), indent=1) + "\n")
    from dss_jax import run_dir

    try:  # a trainer of a killed sweep may still be saving
        run_dir.RunDir(model_dir).wait_until_free(say=lambda text: say(f"[sweep] {text}"))
    except run_dir.RunDirLockedError as err:
        raise SweepError(f"{err}; stop that process or wait for it, then rerun the sweep") from None
    start = clock()
    directory.log_event({"event": "start", "cell": cell.name})
    code = _run_cell(argv, model_dir / CELL_LOG, env, stop)
    directory.log_event({"event": "end", "cell": cell.name, "returncode": code})
    return code, clock() - start


def _accuracy_summary(model_dir) -> str:
    finals = final_evals(read_run_record(model_dir), read_metrics(model_dir))
    return ", ".join(f"{m.get('task')} {m.get('split')} accuracy {m.get('accuracy', float('nan')):.2f}"
                     for m in finals) or "no accuracy recorded"


def _tail(path, lines: int = 20) -> str:
    try:
        text = storage.run_path(path).read_text(errors="replace")
    except OSError:
        return "  (no log)"
    return "\n".join("  " + line for line in text.splitlines()[-lines:])


# ----------------------------------------------------------------------------- launch commands


def launch_commands(sweep: Sweep, sweep_dir, *, launcher: str | None = None, launch_config: str | None = None,
                    launch_dir: str | None = None, search_paths: Sequence[str] = (),
                    python: str = "python3") -> list[str]:
    """One shell line per unfinished cell: the trainer command, or a ``dss_launch`` command.

    ``launcher`` None: ``python3 -m dss_jax.train ...`` lines for any scheduler.  ``tpu`` /
    ``slurm``: the base launch config (YAML, ``launch/example.yaml``) is copied per cell
    into ``launch_dir`` (default ``SWEEP_DIR/launch``) with the cell's name, MODEL_DIR and
    bindings, and the line runs ``python -m dss_launch.tpu up`` / ``dss_launch.slurm --submit``.
    """
    directory = SweepDir(sweep_dir)
    cells = unfinished_cells(sweep, directory)
    if launcher is None:
        return [shlex.join(train_argv(c, str(directory.cell_dir(c)), python, search_paths)) for c in cells]
    if launcher not in ("tpu", "slurm"):
        raise SweepError(f"--launcher={launcher!r}: expected 'tpu' or 'slurm'")
    if not launch_config:
        raise SweepError(f"--launcher={launcher} needs --launch_config=FILE.yaml (the base launch config, "
                         f"see launch/example.yaml)")
    import yaml

    from dss_launch import config as launch_lib

    base_config = launch_lib.load_config(launch_config)  # validates the base
    if (launcher == "tpu" and base_config.tpu is None) or (launcher == "slurm" and base_config.slurm is None):
        raise SweepError(f"{launch_config} has no '{launcher}' section")
    with open(launch_config) as f:
        raw = yaml.safe_load(f)
    if launch_dir is None:
        if storage.is_remote(directory.path):
            raise SweepError(f"SWEEP_DIR {sweep_dir} is remote: pass --launch_dir=LOCAL_FOLDER for the launch configs")
        launch_dir = os.fspath(directory.path / "launch")
    os.makedirs(launch_dir, exist_ok=True)
    lines = []
    for index, cell in enumerate(cells):
        config = dict(raw)
        config["name"] = launch_name(base_config.name, index)
        config["gin_file"] = cell.gin_file
        config["model_dir"] = str(directory.cell_dir(cell))
        config["gin_bindings"] = list(raw.get("gin_bindings") or []) + cell.experiment_bindings()
        launch_lib.parse_config(config)  # the launcher will accept it
        path = os.path.join(launch_dir, f"{cell.name}.yaml")
        with open(path, "w") as f:
            f.write(f"# {cell.describe()} (written by python -m dss_jax.sweep --print_launch_commands)\n")
            yaml.safe_dump(config, f, sort_keys=False)
        if launcher == "tpu":
            lines.append(shlex.join(["python", "-m", "dss_launch.tpu", "up", "--config", path]))
        else:
            script = os.path.join(launch_dir, f"{cell.name}.sbatch")
            lines.append(shlex.join(["python", "-m", "dss_launch.slurm", "--config", path, "--output", script,
                                     "--submit"]))
    return lines


def unfinished_cells(sweep: Sweep, directory: SweepDir, say: Callable[[str], None] = None) -> list[Cell]:
    """The cells without a final evaluation; all of them when the sweep directory cannot be read."""
    say = say or (lambda text: print(text, file=sys.stderr))
    try:
        return [c for c in sweep.cells() if not is_finished(directory.cell_dir(c))]
    except Exception as err:  # noqa: BLE001 -- e.g. a bucket this machine has no credentials for
        say(f"[sweep] could not read {directory} ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"listing every cell")
        return sweep.cells()


def launch_name(base: str, index: int) -> str:
    """A Cloud TPU / SLURM job name per cell: ``<base>-<index>`` within 63 characters."""
    suffix = f"-{index:03d}"
    return base[:63 - len(suffix)].rstrip("-") + suffix
