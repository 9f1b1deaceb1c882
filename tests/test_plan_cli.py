"""Specification of the compile-only plan (python -m dss_jax.plan).

The CLI runs in a subprocess: it needs its own simulated device count.  The settings it
plans come from the run's own Experiment and RunConfig (gin), checked in process.
"""
import os
import re
import subprocess
import sys

import pytest

from dss_jax import losses, trainer
from dss_jax.cli import plan
from dss_jax.configs import get_config

TINY = ["--model=t5_1_1_tiny", "--gin.InputConfig.batch_size=4",
        "--gin.InputConfig.sequence_lengths={'inputs': 32, 'targets': 8}", "--gin.EvalConfig.batch_size=8",
        "--gin.EvalConfig.max_decode_len=8"]


def run_plan_cli(tmp_path, *args, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "dss_jax.plan", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_tiny_model_on_8_simulated_devices_prints_every_field_and_fits(tmp_path):
    result = run_plan_cli(tmp_path, *TINY, "--devices=8", "--mesh=data:4,model:2", "--chip=h100")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "on 8 x NVIDIA H100 SXM, mesh data=4 x model=2" in out
    # paired (the default method and loss mode): 4 examples are 8 rows
    assert "batch 8 x (inputs 32 + targets 8)" in out and "loss paired (alpha 0.5" in out
    for field in ("parameters", "optimizer state", "batch", "activations/temps", "total",
                  "flops/step (XLA)", "flops/step (6*N*T)", "flops/step (model)", "decode weights",
                  "temps (kv caches)"):
        assert re.search(rf"^  {re.escape(field)} +\S", out, re.M), f"missing {field!r} in\n{out}"
    xla_flops = float(re.search(r"flops/step \(XLA\) +(\S+)", out).group(1))
    assert xla_flops > 0
    assert re.search(r"step >= \S+ m?s, MFU <= \d+%", out)
    assert "evaluation decode: batch 8 x inputs 32, greedy, 8 new tokens" in out
    assert re.search(r"per token -> batch >= \S+ m?s, <= \S+ sequences/s", out)
    assert out.strip().endswith("FITS")


def test_xxl_on_four_16_gib_chips_is_refused_with_suggestions(tmp_path):
    result = run_plan_cli(tmp_path, "--model=t5_1_1_xxl", "--devices=4", "--chip=v5e", timeout=300)
    assert result.returncode == plan.EXIT_DOES_NOT_FIT
    out = result.stdout
    assert "DOES NOT FIT" in out and "16 GiB of TPU v5e HBM" in out
    assert "even split over all 4 devices" in out
    assert "OptimizerConfig.name" in out and "adafactor" in out


def test_a_mesh_that_does_not_match_the_devices_is_a_usage_error(tmp_path):
    result = run_plan_cli(tmp_path, *TINY, "--devices=8", "--mesh=data:3,model:2", timeout=120)
    assert result.returncode == 2
    assert "does not divide 8 devices" in result.stderr


def test_mesh_parsing():
    assert plan.parse_mesh("data:8,model:4") == {"data": 8, "model": 4}
    assert plan.resolve_mesh(plan.parse_mesh("model:8"), 64) == (8, 8)
    assert plan.resolve_mesh(plan.parse_mesh("data:-1,model:2"), 8) == (4, 2)
    with pytest.raises(plan.PlanError, match="not 'data:N'"):
        plan.parse_mesh("rows:2")


def test_device_count_flag_replaces_an_existing_one_and_keeps_other_flags():
    flags = plan.xla_flags_with_devices("--xla_force_host_platform_device_count=2 --xla_dump_to=/tmp/x", 64)
    assert flags.split()[0] == "--xla_force_host_platform_device_count=64"
    assert "--xla_dump_to=/tmp/x" in flags and flags.count("device_count") == 1


def _result(state_gib, temp_gib, devices=8, model_parallel=1, fsdp=False, optimizer="adamw"):
    spec = plan.PlanSpec(model_name="m", model_config=get_config("t5_1_1_tiny"), devices=devices,
                         data=devices // model_parallel, model_parallel=model_parallel, fsdp=fsdp,
                         chip=plan.CHIPS["v4"], batch=8, input_length=8, target_length=8,
                         optimizer=trainer.OptimizerConfig(name=optimizer), loss=losses.LossConfig())
    gib = plan.GIB
    return plan.PlanResult(spec=spec, params=1.0, param_bytes=int(state_gib * gib / 3),
                           optimizer_bytes=int(state_gib * gib * 2 / 3), global_state_bytes=int(state_gib * gib),
                           batch_bytes=0, temp_bytes=int(temp_gib * gib), output_extra_bytes=0,
                           compiled_flops_per_device=1.0, analytic={"model": 1.0}, compile_seconds=0.0)


def test_a_state_bound_plan_is_told_to_shard_the_state():
    tips = " ".join(plan.suggestions(_result(state_gib=30, temp_gib=4)))
    assert "--mesh=data:4,model:2" in tips and "--fsdp" in tips and "OptimizerConfig.name" in tips
    assert "--remat" not in tips


def test_an_activation_bound_plan_is_told_to_rematerialise():
    tips = " ".join(plan.suggestions(_result(state_gib=2, temp_gib=40)))
    assert "--remat=full" in tips and "num_microbatches" in tips
    assert "--fsdp" not in tips


def test_roofline_step_time_is_bounded_by_compute_or_hbm():
    result = _result(state_gib=3, temp_gib=1)
    result.compiled_flops_per_device = 275e12  # one second at TPU v4 peak
    result.analytic = {"model": 0.5 * 275e12 * result.spec.devices}
    timing = result.step_time()
    assert timing["compute_s"] == pytest.approx(1.0)
    assert timing["memory_s"] == pytest.approx((2 * 3 + 2 * 1) * plan.GIB / 1200e9, rel=1e-3)
    assert timing["step_s"] == pytest.approx(1.0)
    assert timing["mfu"] == pytest.approx(0.5)


def test_settings_come_from_the_trainers_gin_file_and_flags_override_them(tmp_path):
    (tmp_path / "plan_xxl.gin").write_text(
        "include 'runs/finetune.gin'\n"
        "include 'models/t5_1_1_xxl.gin'\n"
        "Experiment.benchmark = 'cqa'\n"
        "InputConfig.batch_size = 32\n"
        "InputConfig.sequence_lengths = {'inputs': 128, 'targets': 64}\n"
        "MeshConfig.fsdp = True\n"
        "MeshConfig.shape = (1, 4)\n"
        "model_config.overrides = {'remat_policy': 'full'}\n"
    )
    result = run_plan_cli(tmp_path, "--gin_file=plan_xxl.gin", "--devices=4", "--chip=v5e", "--remat=minimal",
                          timeout=300)
    assert result.returncode == plan.EXIT_DOES_NOT_FIT, result.stderr[-3000:]
    header = result.stdout.splitlines()[:2]
    assert header[0].startswith("plan: t5_1_1_xxl (11.14 B params) on 4 x TPU v5e, mesh data=1 x model=4, "
                                "fsdp=on, remat=minimal, optimizer=adamw")
    assert "parameters + optimizer state alone need" in result.stdout  # refused before compiling
    # paired mode: each of the 32 examples is a label row and a rationale row
    assert header[1].startswith("batch 64 x (inputs 128 + targets 64)")


@pytest.fixture
def clean_gin():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def _spec(*bindings, files=("runs/finetune.gin", "models/t5_1_1_tiny.gin"), devices=4, mesh=None):
    experiment, run = plan.configs_from_gin(list(files), [plan.UNUSED_MODEL_DIR, *bindings])
    args = plan.build_parser().parse_args([f"--devices={devices}"] + ([f"--mesh={mesh}"] if mesh else []))
    return plan.spec_from_configs(experiment, run, args, "tiny")


@pytest.mark.parametrize("bindings, mode", [
    ((), "paired"),
    (("Experiment.loss_mode = 'mixture'",), "per_sequence"),
    (("Experiment.method = 'standard_finetune'",), "token_mean"),
])
def test_the_plan_compiles_the_loss_of_the_runs_own_experiment(clean_gin, bindings, mode):
    spec = _spec(*bindings, "Experiment.lam = 3.0", "Experiment.num_microbatches = 2")
    assert spec.loss.mode == mode and spec.microbatches == 2
    if mode == "paired":
        assert spec.loss.alpha == pytest.approx(0.25)


def test_the_plan_reads_input_eval_and_mesh_settings_from_the_runs_configs(clean_gin):
    spec = _spec("InputConfig.batch_size = 6", "InputConfig.sequence_lengths = {'inputs': 48, 'targets': 12}",
                 "EvalConfig.batch_size = 16", "EvalConfig.max_decode_len = 5", "MeshConfig.shape = (2, 2)",
                 "MeshConfig.fsdp = True", "OptimizerConfig.name = 'adafactor'")
    assert (spec.batch, spec.input_length, spec.target_length) == (12, 48, 12)  # paired: two rows an example
    assert (spec.data, spec.model_parallel, spec.fsdp, spec.optimizer.name) == (2, 2, True, "adafactor")
    assert (spec.eval_batch, spec.eval_input_length, spec.max_decode_len) == (16, 48, 5)
    assert spec.model_config.matmul == "xla"  # resolved for the chip (TPU v4), not this CPU


def test_a_bucketed_run_is_planned_at_its_largest_step(clean_gin):
    spec = _spec("InputConfig.batch_size = 4", "InputConfig.sequence_lengths = {'inputs': 40, 'targets': 10}",
                 "InputConfig.pack = 'buckets'", "InputConfig.encoder_row_lens = (32, 48)",
                 "InputConfig.decoder_row_lens = (10,)")
    assert (spec.batch, spec.input_length, spec.target_length, spec.pack) == (8, 48, 10, "buckets")


def test_a_batch_the_data_axis_does_not_divide_is_a_plan_error_naming_the_setting(clean_gin):
    with pytest.raises(plan.PlanError, match="InputConfig.batch_size = 3"):
        _spec("InputConfig.batch_size = 3", "InputConfig.pack = True", mesh="data:4,model:1")


def test_decode_roofline_reads_the_weights_once_per_token():
    decode = plan.DecodePlan(batch=64, input_length=1024, max_decode_len=10, weight_bytes=12 * 10**9, temp_bytes=0,
                             output_bytes=0, encoder_flops=275e12, token_flops=1.0, compile_seconds=0.0)
    timing = decode.time(plan.CHIPS["v4"])
    assert timing["encoder_s"] == pytest.approx(1.0)
    assert timing["token_s"] == pytest.approx(0.01)  # 12 GB at 1200 GB/s
    assert timing["batch_s"] == pytest.approx(1.1) and timing["sequences_per_s"] == pytest.approx(64 / 1.1)
