"""Specification of the Cloud TPU launcher (dss_launch.tpu): the exact gcloud commands.

No test talks to Google Cloud: commands are recorded by the dry-run runner, or run
against a fake ``gcloud`` on PATH that only records its arguments.
"""
import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
import yaml

from dss_launch import tpu
from dss_launch.config import ConfigError, load_config, parse_config
from dss_launch.runner import CommandFailed, DryRunRunner

SCOPE = ["--zone=us-central2-b", "--project=dss-project"]
WHEEL = "dist/dss_jax-0.1.0-py3-none-any.whl"
EXPECTED_TRAIN_ARGV = [
    "python3", "-m", "dss_jax.train", "--gin_file=dss_cqa_xxl.gin",
    '--gin.MODEL_DIR="gs://dss-bucket/runs/cqa xxl"', "--gin.TrainConfig.steps=10000",
    "--gin.InputConfig.batch_size=64", "--gin.MeshConfig.multihost=True",
]


def v4_64_config(**tpu_overrides):
    raw = {
        "name": "dss-cqa-xxl",
        "gin_file": "dss_cqa_xxl.gin",
        "model_dir": "gs://dss-bucket/runs/cqa xxl",
        "gin_bindings": ["TrainConfig.steps=10000", "InputConfig.batch_size=64"],
        "env": {"DSS_VOCAB": "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"},
        "tpu": {
            "project": "dss-project",
            "zone": "us-central2-b",
            "accelerator_type": "v4-64",
            "runtime_version": "tpu-ubuntu2204-base",
            "install": WHEEL,
            **tpu_overrides,
        },
    }
    return parse_config(raw)


def remote_command(ssh_argv):
    (flag,) = [a for a in ssh_argv if a.startswith("--command=")]
    return flag[len("--command="):]


def test_up_on_a_v4_64_pod_runs_exactly_these_commands():
    runner = DryRunRunner(out=open(os.devnull, "w"))
    tpu.up(v4_64_config(), runner)
    base = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert runner.commands[:4] == [
        [*base, "describe", "dss-cqa-xxl", *SCOPE, "--format=value(state)"],
        [*base, "create", "dss-cqa-xxl", *SCOPE, "--accelerator-type=v4-64", "--version=tpu-ubuntu2204-base"],
        [*base, "scp", WHEEL, "dss-cqa-xxl:~/", *SCOPE, "--worker=all"],
        [*base, "ssh", "dss-cqa-xxl", *SCOPE, "--worker=all",
         "--command=python3 -m pip install --upgrade 'jax[tpu]>=0.10,<0.11' ./dss_jax-0.1.0-py3-none-any.whl"],
    ]
    train = runner.commands[4]
    assert train[:-1] == [*base, "ssh", "dss-cqa-xxl", *SCOPE, "--worker=all"]
    assert remote_command(train) == (
        "mkdir -p dss_logs && nohup env "
        "DSS_VOCAB=gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model "
        "python3 -m dss_jax.train --gin_file=dss_cqa_xxl.gin "
        "'--gin.MODEL_DIR=\"gs://dss-bucket/runs/cqa xxl\"' --gin.TrainConfig.steps=10000 --gin.InputConfig.batch_size=64 "
        "--gin.MeshConfig.multihost=True > dss_logs/dss-cqa-xxl.log 2>&1 < /dev/null & echo $! > dss_logs/dss-cqa-xxl.pid"
    )
    assert len(runner.commands) == 5


def test_remote_train_command_splits_back_into_the_trainer_argv():
    script = tpu.remote_train_script(v4_64_config())
    words = shlex.split(script.split("nohup ", 1)[1].split(" > ", 1)[0])
    assert words[0] == "env" and words[1].startswith("DSS_VOCAB=")
    assert words[2:] == EXPECTED_TRAIN_ARGV


def test_queued_resource_is_created_with_a_node_id_and_polled_until_active():
    runner = DryRunRunner(out=open(os.devnull, "w"))
    tpu.create(v4_64_config(queued_resource=True, spot=True), runner)
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    describe = [*qr, "describe", "dss-cqa-xxl", *SCOPE, "--format=value(state.state)"]
    assert runner.commands == [
        describe,
        [*qr, "create", "dss-cqa-xxl", "--node-id=dss-cqa-xxl", *SCOPE, "--accelerator-type=v4-64",
         "--runtime-version=tpu-ubuntu2204-base", "--spot"],
        describe,
    ]


class ScriptedRunner:
    """Answers probes from a list of (exit code, stdout); records everything."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.commands = []
        self.notes = []

    def note(self, text):
        self.notes.append(text)

    def run(self, argv):
        self.commands.append(list(argv))

    def probe(self, argv):
        self.commands.append(list(argv))
        return self.answers.pop(0)


def test_an_existing_node_is_reused_not_created():
    runner = ScriptedRunner([(0, "READY")])
    tpu.create(v4_64_config(), runner)
    assert [c[4] for c in runner.commands] == ["describe"]
    assert any("reusing" in n for n in runner.notes)


def test_waiting_for_a_queued_resource_polls_until_active():
    runner = ScriptedRunner([(1, ""), (0, "WAITING_FOR_RESOURCES"), (0, "PROVISIONING"), (0, "ACTIVE")])
    sleeps = []
    tpu.create(v4_64_config(queued_resource=True), runner, sleep=sleeps.append, clock=lambda: 0.0)
    assert [c[4] for c in runner.commands] == ["describe", "create", "describe", "describe", "describe"]
    assert sleeps == [30.0, 30.0]


def test_a_failed_queued_resource_stops_the_launch():
    runner = ScriptedRunner([(0, "FAILED")])
    with pytest.raises(CommandFailed, match="FAILED"):
        tpu.wait_until_active(v4_64_config(queued_resource=True), runner, sleep=lambda s: None)


def test_waiting_for_a_queued_resource_times_out():
    runner = ScriptedRunner([(0, "WAITING_FOR_RESOURCES")] * 3)
    times = iter([0.0, 10.0, 4000.0])
    with pytest.raises(CommandFailed, match="not ACTIVE after 3600 s"):
        tpu.wait_until_active(v4_64_config(queued_resource=True), runner, sleep=lambda s: None,
                              clock=lambda: next(times))


def test_setup_from_a_git_url_installs_it_directly_on_every_worker():
    runner = DryRunRunner(out=open(os.devnull, "w"))
    tpu.setup(v4_64_config(install="git+https://github.com/me/dss_jax@v0.1"), runner)
    assert len(runner.commands) == 1
    assert runner.commands[0][-2:] == [
        "--worker=all",
        "--command=python3 -m pip install --upgrade 'jax[tpu]>=0.10,<0.11' git+https://github.com/me/dss_jax@v0.1",
    ]


def test_worker_setup_lines_run_on_every_worker_after_the_install():
    runner = DryRunRunner(out=open(os.devnull, "w"))
    tpu.setup(v4_64_config(worker_setup=["python3 -m dss_jax.data fetch --yes --cache_dir dss_cache", "ls"]), runner)
    assert runner.commands[-1][-2:] == [
        "--worker=all", "--command=python3 -m dss_jax.data fetch --yes --cache_dir dss_cache && ls"]


def test_setup_by_default_builds_a_wheel_of_this_checkout_and_copies_it():
    runner = DryRunRunner(out=open(os.devnull, "w"))
    tpu.setup(v4_64_config(install="wheel"), runner, python="py", repo_root="/src/dss", dist_dir="/src/dss/dist")
    wheel_name = tpu.default_wheel_name()
    assert runner.commands[0] == ["py", "-m", "pip", "wheel", "--no-deps", "--wheel-dir", "/src/dss/dist", "/src/dss"]
    assert runner.commands[1][5] == f"/src/dss/dist/{wheel_name}"
    assert runner.commands[2][-1].endswith(f" ./{wheel_name}")


def test_logs_stop_and_delete_commands():
    config = v4_64_config()
    assert tpu.ssh_command(config, tpu.remote_logs_script(config, 50, follow=True), worker="3")[-2:] == [
        "--worker=3", "--command=tail -n 50 -f dss_logs/dss-cqa-xxl.log"]
    assert remote_command(tpu.ssh_command(config, tpu.remote_stop_script(config))) == (
        "if [ -f dss_logs/dss-cqa-xxl.pid ]; then kill $(cat dss_logs/dss-cqa-xxl.pid) || true; "
        "rm -f dss_logs/dss-cqa-xxl.pid; fi")
    assert tpu.delete_command(config) == [
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "dss-cqa-xxl", *SCOPE, "--quiet"]
    assert tpu.delete_command(v4_64_config(queued_resource=True)) == [
        "gcloud", "compute", "tpus", "queued-resources", "delete", "dss-cqa-xxl", *SCOPE, "--force", "--quiet"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tpu_typo": 1}, r"unknown key\(s\) \['tpu_typo'\]"),
        ({"name": "Bad_Name"}, "must be lower-case"),
        ({"gin_bindings": ["TrainConfig.steps"]}, "not of the form NAME=VALUE"),
        ({"env": {"DSS VOCAB": "x"}}, "not a valid environment variable name"),
        ({"tpu": {"project": "p", "zone": "z", "accelerator_type": "v4-8"}}, r"missing required key\(s\) \['runtime_version'\]"),
        ({"tpu": {"project": "p", "zone": "z", "accelerator_type": "v4-8", "runtime_version": "r", "spot": "yes"}},
         "tpu.spot: expected bool"),
    ],
)
def test_invalid_configs_are_refused_with_the_key_named(tmp_path, change, message):
    raw = {"name": "run", "gin_file": "a.gin", "model_dir": "/m", **change}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_the_shipped_example_config_is_valid():
    config = load_config(pathlib.Path(tpu.__file__).with_name("example.yaml"))
    assert config.tpu.accelerator_type == "v4-64" and config.slurm.nodes == 2


def _fake_gcloud(tmp_path):
    """A `gcloud` that appends its argv (as JSON) to calls.jsonl and succeeds."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.jsonl"
    script = bindir / "gcloud"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    return env, calls


def _write_config(tmp_path):
    path = tmp_path / "launch.yaml"
    path.write_text(yaml.safe_dump({
        "name": "dss-cqa-xxl", "gin_file": "dss_cqa_xxl.gin", "model_dir": "gs://b/m",
        "tpu": {"project": "dss-project", "zone": "us-central2-b", "accelerator_type": "v4-64",
                "runtime_version": "tpu-ubuntu2204-base"},
    }))
    return path


def test_cli_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
    env, calls = _fake_gcloud(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dss_launch.tpu", "delete", "--config", str(_write_config(tmp_path)), "--dry_run"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "gcloud compute tpus tpu-vm delete dss-cqa-xxl --zone=us-central2-b --project=dss-project --quiet")
    assert not calls.exists()


def test_cli_without_dry_run_calls_gcloud_with_the_argument_list(tmp_path):
    env, calls = _fake_gcloud(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dss_launch.tpu", "logs", "--config", str(_write_config(tmp_path)), "--no_follow"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in calls.read_text().splitlines()] == [[
        "compute", "tpus", "tpu-vm", "ssh", "dss-cqa-xxl", "--zone=us-central2-b", "--project=dss-project",
        "--worker=0", "--command=tail -n 100 dss_logs/dss-cqa-xxl.log"]]


PARSE_TRAIN_ARGS = """
import json, sys, argparse
import gin
from dss_jax import gin_utils
from dss_jax.cli import train  # registers the `train` configurable
gin_utils.parse_args_and_gin(argparse.ArgumentParser(), sys.argv[1:])
print(json.dumps({"multihost": gin.query_parameter("MeshConfig.multihost"),
                  "model_dir": gin.query_parameter("%MODEL_DIR"),
                  "train_steps": gin.query_parameter("TrainConfig.steps")}))
"""


def test_the_trainer_accepts_the_launched_command_line(tmp_path):
    """The argv the launcher starts on every worker parses with dss_jax.train's own flags and gin."""
    config = parse_config({"name": "dss-arith", "gin_file": "dss_arith_tiny.gin", "model_dir": "/tmp/run dir",
                           "gin_bindings": ["TrainConfig.steps=7"]})
    argv = tpu.train_argv(config)
    assert argv[:3] == ["python3", "-m", "dss_jax.train"]
    result = subprocess.run([sys.executable, "-c", PARSE_TRAIN_ARGS, *argv[3:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "multihost": True, "model_dir": "/tmp/run dir", "train_steps": 7}
