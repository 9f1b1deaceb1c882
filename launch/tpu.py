"""Cloud TPU pod launcher: create or reuse a slice, install dss_jax, train on all workers.

Usage (``--dry_run`` prints every command and runs none)::

    python -m dss_launch.tpu up     --config launch/example.yaml [--dry_run]
    python -m dss_launch.tpu create --config ...   # TPU VM or queued resource (reused if it exists)
    python -m dss_launch.tpu setup  --config ...   # pip install dss_jax on --worker=all
    python -m dss_launch.tpu train  --config ...   # start training on all workers at once
    python -m dss_launch.tpu logs   --config ... [--worker=0|all] [--lines=100] [--no_follow]
    python -m dss_launch.tpu stop   --config ...   # kill the training processes
    python -m dss_launch.tpu delete --config ...   # tear the slice down

``up`` = create-or-reuse + setup + train.  Every command is built as an argument list
(no local shell); the one string that a remote shell does read, ``--command=...``, is
assembled from ``shlex.quote``d pieces.  On a TPU VM slice ``jax.distributed.initialize()``
needs no arguments (the TPU metadata server supplies coordinator and process ids); the
trainer calls it when given ``--gin.MeshConfig.multihost=True``, which the launcher adds.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import shlex
import sys
import time
from typing import Callable, Sequence

from dss_launch.config import ConfigError, LaunchConfig, TpuConfig, load_config
from dss_launch.runner import CommandFailed, DryRunRunner, SubprocessRunner
from dss_launch.train_command import train_argv

GCLOUD_TPU = ("gcloud", "compute", "tpus")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
QUEUED_READY_STATE = "ACTIVE"
QUEUED_FAILED_STATES = ("FAILED", "SUSPENDED", "SUSPENDING")


def _tpu(config: LaunchConfig) -> TpuConfig:
    if config.tpu is None:
        raise ConfigError("the config has no 'tpu' section")
    return config.tpu


def _scope(tpu: TpuConfig) -> list[str]:
    return [f"--zone={tpu.zone}", f"--project={tpu.project}"]


# ----------------------------------------------------------------------------- commands


def describe_command(config: LaunchConfig) -> list[str]:
    """Query whether the node (or queued resource) exists; prints its state."""
    tpu = _tpu(config)
    if tpu.queued_resource:
        return [*GCLOUD_TPU, "queued-resources", "describe", config.name, *_scope(tpu),
                "--format=value(state.state)"]
    return [*GCLOUD_TPU, "tpu-vm", "describe", config.name, *_scope(tpu), "--format=value(state)"]


def create_command(config: LaunchConfig) -> list[str]:
    """Create a TPU VM slice, or a queued resource holding one node of the slice."""
    tpu = _tpu(config)
    spot = ["--spot"] if tpu.spot else []
    if tpu.queued_resource:
        return [*GCLOUD_TPU, "queued-resources", "create", config.name, f"--node-id={config.name}",
                *_scope(tpu), f"--accelerator-type={tpu.accelerator_type}",
                f"--runtime-version={tpu.runtime_version}", *spot]
    return [*GCLOUD_TPU, "tpu-vm", "create", config.name, *_scope(tpu),
            f"--accelerator-type={tpu.accelerator_type}", f"--version={tpu.runtime_version}", *spot]


def delete_command(config: LaunchConfig) -> list[str]:
    """Delete the slice (for a queued resource, ``--force`` also deletes its node)."""
    tpu = _tpu(config)
    if tpu.queued_resource:
        return [*GCLOUD_TPU, "queued-resources", "delete", config.name, *_scope(tpu), "--force", "--quiet"]
    return [*GCLOUD_TPU, "tpu-vm", "delete", config.name, *_scope(tpu), "--quiet"]


def ssh_command(config: LaunchConfig, remote_command: str, worker: str = "all") -> list[str]:
    """Run one remote shell command on the given worker(s); ``all`` runs them in parallel."""
    tpu = _tpu(config)
    return [*GCLOUD_TPU, "tpu-vm", "ssh", config.name, *_scope(tpu), f"--worker={worker}",
            f"--command={remote_command}"]


def scp_to_workers_command(config: LaunchConfig, local_path: str) -> list[str]:
    """Copy one local file into the home directory of every worker."""
    tpu = _tpu(config)
    return [*GCLOUD_TPU, "tpu-vm", "scp", local_path, f"{config.name}:~/", *_scope(tpu), "--worker=all"]


def default_wheel_name() -> str:
    """File name of the wheel ``pip wheel`` builds from this checkout (pure Python)."""
    version = importlib.metadata.version("dss_jax")
    return f"dss_jax-{version}-py3-none-any.whl"


def build_wheel_command(python: str, repo_root: str, dist_dir: str) -> list[str]:
    """Build a wheel of the checkout locally (dependencies are resolved on the workers)."""
    return [python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist_dir, repo_root]


def remote_install_script(config: LaunchConfig, requirement: str) -> str:
    """Shell line run on every worker: pip install the accelerator extras and dss_jax."""
    tpu = _tpu(config)
    pip = [config.python, "-m", "pip", "install", "--upgrade", *tpu.pip_extra, requirement]
    return shlex.join(pip)


def log_path(config: LaunchConfig) -> str:
    return f"{config.log_dir}/{config.name}.log"


def pid_path(config: LaunchConfig) -> str:
    return f"{config.log_dir}/{config.name}.pid"


def remote_train_script(config: LaunchConfig) -> str:
    """Shell line run on every worker: start training in the background, detached.

    ``nohup`` + redirected stdin/stdout/stderr lets the ssh session return while
    training goes on; the process id is kept so that ``stop`` can end exactly it.
    """
    env = [f"{key}={value}" for key, value in sorted(config.env.items())]
    command = (["env", *env] if env else []) + train_argv(config)
    log_dir = shlex.quote(config.log_dir)
    return (
        f"mkdir -p {log_dir} && nohup {shlex.join(command)} "
        f"> {shlex.quote(log_path(config))} 2>&1 < /dev/null & "
        f"echo $! > {shlex.quote(pid_path(config))}"
    )


def remote_logs_script(config: LaunchConfig, lines: int, follow: bool) -> str:
    follow_flag = ["-f"] if follow else []
    return shlex.join(["tail", "-n", str(lines), *follow_flag, log_path(config)])


def remote_stop_script(config: LaunchConfig) -> str:
    pid_file = shlex.quote(pid_path(config))
    return f"if [ -f {pid_file} ]; then kill $(cat {pid_file}) || true; rm -f {pid_file}; fi"


# ----------------------------------------------------------------------------- actions


def create(config: LaunchConfig, runner, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic, poll_s: float = 30.0) -> None:
    """Create the slice unless it exists; for a queued resource, wait until ACTIVE."""
    tpu = _tpu(config)
    exists, _ = runner.probe(describe_command(config))
    if exists == 0:
        runner.note(f"reusing existing {'queued resource' if tpu.queued_resource else 'TPU VM'} {config.name}")
    else:
        runner.run(create_command(config))
    if tpu.queued_resource:
        wait_until_active(config, runner, sleep=sleep, clock=clock, poll_s=poll_s)


def wait_until_active(config: LaunchConfig, runner, sleep: Callable[[float], None] = time.sleep,
                      clock: Callable[[], float] = time.monotonic, poll_s: float = 30.0) -> None:
    """Poll the queued resource until its state is ACTIVE; fail on FAILED/SUSPENDED or timeout."""
    tpu = _tpu(config)
    if isinstance(runner, DryRunRunner):
        runner.note(f"poll every {poll_s:.0f} s until the state is {QUEUED_READY_STATE} "
                    f"(at most {tpu.wait_timeout_s} s):")
        runner.run(describe_command(config))
        return
    deadline = clock() + tpu.wait_timeout_s
    while True:
        code, state = runner.probe(describe_command(config))
        if code == 0 and state == QUEUED_READY_STATE:
            return
        if code == 0 and state in QUEUED_FAILED_STATES:
            raise CommandFailed(f"queued resource {config.name} is {state}")
        if clock() >= deadline:
            raise CommandFailed(f"queued resource {config.name} not {QUEUED_READY_STATE} after "
                                f"{tpu.wait_timeout_s} s (last state: {state or 'unknown'})")
        runner.note(f"queued resource {config.name} is {state or 'not visible yet'}; waiting {poll_s:.0f} s")
        sleep(poll_s)


def setup(config: LaunchConfig, runner, python: str = sys.executable, repo_root: str = str(REPO_ROOT),
          dist_dir: str | None = None) -> None:
    """Install dss_jax (and the TPU build of jax) on every worker."""
    tpu = _tpu(config)
    if tpu.install == "wheel":
        dist_dir = dist_dir or str(pathlib.Path(repo_root) / "dist")
        runner.run(build_wheel_command(python, repo_root, dist_dir))
        wheel = str(pathlib.Path(dist_dir) / default_wheel_name())
        if not isinstance(runner, DryRunRunner) and not pathlib.Path(wheel).is_file():
            raise CommandFailed(f"expected the built wheel at {wheel}; it is not there")
    elif tpu.install.endswith(".whl"):
        wheel = tpu.install
        if not isinstance(runner, DryRunRunner) and not pathlib.Path(wheel).is_file():
            raise CommandFailed(f"tpu.install: wheel {wheel} not found")
    else:
        wheel = None
    if wheel is not None:
        runner.run(scp_to_workers_command(config, wheel))
        requirement = f"./{pathlib.Path(wheel).name}"
    else:
        requirement = tpu.install
    runner.run(ssh_command(config, remote_install_script(config, requirement)))
    if tpu.worker_setup:
        runner.run(ssh_command(config, " && ".join(tpu.worker_setup)))


def train(config: LaunchConfig, runner) -> None:
    """Start training on all workers at once (one ssh fan-out, ``--worker=all``)."""
    runner.run(ssh_command(config, remote_train_script(config)))
    runner.note(f"training started; logs: python -m dss_launch.tpu logs --config <this config> "
                f"(remote file ~/{log_path(config)})")


def up(config: LaunchConfig, runner, **setup_kwargs) -> None:
    """create-or-reuse, install, train."""
    create(config, runner)
    setup(config, runner, **setup_kwargs)
    train(config, runner)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="launch config (YAML), see launch/example.yaml")
    common.add_argument("--dry_run", action="store_true", help="print every command; run none")
    parser = argparse.ArgumentParser(prog="python -m dss_launch.tpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_text in [
        ("up", "create-or-reuse + setup + train"),
        ("create", "create the TPU VM / queued resource (reuse if it exists)"),
        ("setup", "install dss_jax on every worker"),
        ("train", "start training on all workers"),
        ("stop", "kill the training processes on all workers"),
        ("delete", "delete the TPU VM / queued resource"),
    ]:
        sub.add_parser(action, parents=[common], help=help_text)
    logs = sub.add_parser("logs", parents=[common], help="show the training log")
    logs.add_argument("--worker", default="0", help="worker index, or 'all'")
    logs.add_argument("--lines", type=int, default=100)
    logs.add_argument("--no_follow", action="store_true", help="print and return instead of following")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        _tpu(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runner = DryRunRunner() if args.dry_run else SubprocessRunner()
    try:
        if args.action == "up":
            up(config, runner)
        elif args.action == "create":
            create(config, runner)
        elif args.action == "setup":
            setup(config, runner)
        elif args.action == "train":
            train(config, runner)
        elif args.action == "logs":
            script = remote_logs_script(config, args.lines, follow=not args.no_follow)
            runner.run(ssh_command(config, script, worker=args.worker))
        elif args.action == "stop":
            runner.run(ssh_command(config, remote_stop_script(config)))
        elif args.action == "delete":
            runner.run(delete_command(config))
    except CommandFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
