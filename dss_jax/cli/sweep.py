"""``python -m dss_jax.sweep``: run a grid of training runs, then gather it into tables and figures.

    python -m dss_jax.sweep run --gin_file=sweeps/arith_miniature.gin --gin.SWEEP_DIR="'/tmp/sweep'"
    python -m dss_jax.sweep run --gin_file=... --gin.SWEEP_DIR=... --print_launch_commands [--launcher=tpu
        --launch_config=launch/example.yaml]
    python -m dss_jax.sweep report /tmp/sweep

``run`` trains every unfinished cell of the grid one after another, each an ordinary
``python -m dss_jax.train`` run in ``SWEEP_DIR/cells/<cell>`` (its log: ``train.log``
there); rerun the same command after a stop and it skips the finished cells and resumes
the one that was running from its checkpoint.  ``--print_launch_commands`` prints one
command per unfinished cell instead: the trainer's command line, or with ``--launcher``
a ``dss_launch.tpu`` / ``dss_launch.slurm`` command and a launch config per cell.
``report`` writes ``results.csv``, ``results.json``, ``results.md`` and ``figures/*.png``
into the sweep directory (``dss_jax/sweep_report.py``).  The grid is the gin configurable ``Sweep``
(``dss_jax/sweeps.py``).
Exit codes: 0 done, 1 a cell failed or the sweep was stopped, 2 bad configuration.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import gin

from dss_jax import sweep_report, sweeps

sweep_config = gin.external_configurable(sweeps.Sweep, name="Sweep")


@gin.configurable
def sweep(sweep_dir: str = gin.REQUIRED, grid: sweeps.Sweep = gin.REQUIRED) -> tuple[str, sweeps.Sweep]:
    """What the sweep gin file binds: ``sweep.sweep_dir = %SWEEP_DIR`` and ``sweep.grid = @Sweep()``."""
    if not isinstance(sweep_dir, str) or not sweep_dir.strip():
        raise sweeps.SweepError("SWEEP_DIR is not set: pass --gin.SWEEP_DIR=\"'/path/to/sweep'\" (a folder of its own: "
                                "every cell trains in SWEEP_DIR/cells/<cell>)")
    if not isinstance(grid, sweeps.Sweep):
        raise sweeps.SweepError("sweep.grid: expected @Sweep() (see gin/sweeps/*.gin)")
    return sweep_dir, grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dss_jax.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the grid's unfinished cells (resumable)")
    run.add_argument("--print_launch_commands", action="store_true",
                     help="print one command per unfinished cell instead of running them")
    run.add_argument("--launcher", choices=["tpu", "slurm"], default=None,
                     help="with --print_launch_commands: dss_launch commands and a launch config per cell")
    run.add_argument("--launch_config", default=None, help="the base launch config (YAML) for --launcher")
    run.add_argument("--launch_dir", default=None, help="where the per-cell launch configs go (default SWEEP_DIR/launch)")
    run.add_argument("--keep_going", action="store_true", help="after a failed cell, go on with the next")
    report = commands.add_parser("report", help="results.csv/.json/.md and figures of a sweep directory")
    report.add_argument("sweep_dir")
    report.add_argument("--benchmark", default=None,
                        help="benchmark of the teacher line (default: the cells' own, when they share one)")
    return parser


def _run(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from dss_jax import gin_utils

    gin_parser = argparse.ArgumentParser(prog="python -m dss_jax.sweep run")
    gin_args = gin_utils.parse_args_and_gin(gin_parser, rest)
    gin_utils.check_configuration()
    search_paths = [p for p in gin_args.gin_search_paths.split(",") if p]
    sweep_dir, grid = sweep()
    if args.print_launch_commands:
        for line in sweeps.launch_commands(grid, sweep_dir, launcher=args.launcher, launch_config=args.launch_config,
                                           launch_dir=args.launch_dir, search_paths=search_paths):
            print(line)
        return 0
    if args.launcher or args.launch_config:
        raise sweeps.SweepError("--launcher/--launch_config go with --print_launch_commands")
    outcome = sweeps.run_sweep(grid, sweep_dir, search_paths=search_paths, keep_going=args.keep_going)
    return 1 if outcome.failed or outcome.interrupted else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `run` takes the gin flags (--gin_file, --gin.X=Y, ...) besides its own: split them off.
    args, rest = parser.parse_known_args(argv)
    if args.command == "report" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from dss_jax import gin_utils
    from dss_launch import config as launch_config

    errors = gin_utils.user_errors() + (sweeps.SweepError, launch_config.ConfigError)
    try:
        if args.command == "report":
            sweep_report.write_report(args.sweep_dir, benchmark=args.benchmark)
            return 0
        return _run(args, rest)
    except errors as err:
        print(f"python -m dss_jax.sweep: error: {err}", file=sys.stderr, flush=True)
        return 2
