"""Specification of the compile-only plan (python -m dss_jax.plan).

The CLI runs in a subprocess: it needs its own simulated device count.
"""
import os
import re
import subprocess
import sys

import pytest

from dss_jax import plan
from dss_jax.configs import get_config


def run_plan_cli(tmp_path, *args, timeout=600):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "dss_jax.plan", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_tiny_model_on_8_simulated_devices_prints_every_field_and_fits(tmp_path):
    result = run_plan_cli(tmp_path, "--model=t5_1_1_tiny", "--devices=8", "--mesh=data:4,model:2", "--batch=8",
                          "--input_length=32", "--target_length=8", "--chip=h100")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "on 8 x NVIDIA H100 SXM, mesh data=4 x model=2" in out
    for field in ("parameters", "optimizer state", "batch", "activations/temps", "total",
                  "flops/step (XLA)", "flops/step (6*N*T)", "flops/step (model)"):
        assert re.search(rf"^  {re.escape(field)} +\S", out, re.M), f"missing {field!r} in\n{out}"
    xla_flops = float(re.search(r"flops/step \(XLA\) +(\S+)", out).group(1))
    assert xla_flops > 0
    assert re.search(r"step >= \S+ m?s, MFU <= \d+%", out)
    assert out.strip().endswith("FITS")


def test_xxl_on_four_16_gib_chips_is_refused_with_suggestions(tmp_path):
    result = run_plan_cli(tmp_path, "--model=t5_1_1_xxl", "--devices=4", "--chip=v5e", timeout=300)
    assert result.returncode == plan.EXIT_DOES_NOT_FIT
    out = result.stdout
    assert "DOES NOT FIT" in out and "16 GiB of TPU v5e HBM" in out
    assert "even split over all 4 devices" in out
    assert "--optimizer=adafactor" in out


def test_a_mesh_that_does_not_match_the_devices_is_a_usage_error(tmp_path):
    result = run_plan_cli(tmp_path, "--model=t5_1_1_tiny", "--devices=8", "--mesh=data:3,model:2", timeout=120)
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
                         optimizer={"name": optimizer})
    gib = plan.GIB
    return plan.PlanResult(spec=spec, params=1.0, param_bytes=int(state_gib * gib / 3),
                           optimizer_bytes=int(state_gib * gib * 2 / 3), global_state_bytes=int(state_gib * gib),
                           batch_bytes=0, temp_bytes=int(temp_gib * gib), output_extra_bytes=0,
                           compiled_flops_per_device=1.0, analytic={"model": 1.0}, compile_seconds=0.0)


def test_a_state_bound_plan_is_told_to_shard_the_state():
    tips = " ".join(plan.suggestions(_result(state_gib=30, temp_gib=4)))
    assert "--mesh=data:4,model:2" in tips and "--fsdp" in tips and "--optimizer=adafactor" in tips
    assert "--remat" not in tips


def test_an_activation_bound_plan_is_told_to_rematerialise():
    tips = " ".join(plan.suggestions(_result(state_gib=2, temp_gib=40)))
    assert "--remat=full" in tips and "--microbatches" in tips
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
        "BENCHMARK = 'cqa'\n"
        "BATCH_SIZE = 32\n"
        "SEQUENCE_LENGTHS = {'inputs': 128, 'targets': 64}\n"
        "train.fsdp = True\n"
        "train.mesh_shape = (1, 4)\n"
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
