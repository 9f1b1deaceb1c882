"""The hardware seam (`dss_jax.hardware`): what `resolve` picks for which machine, that it
keeps explicit choices, that the model refuses unresolved ones, and that nothing else
reads the process."""
import pathlib

import jax
import numpy as np
import pytest

import dss_jax
from dss_jax import hardware
from dss_jax.configs import HARDWARE_FIELDS
from dss_jax.model import T5, abstract_params
from model_support import PROGRAMS, program_config, random_params

PACKAGE = pathlib.Path(dss_jax.__file__).parent


def _picked(config):
    return {field: getattr(config, field) for field in HARDWARE_FIELDS}


def _bf16():
    return dss_jax.get_config("t5_1_1_tiny", dtype="bfloat16")


def test_a_new_config_leaves_every_hardware_choice_to_the_entrypoint():
    assert dss_jax.get_config("t5_1_1_tiny").unresolved_hardware_fields == HARDWARE_FIELDS


def test_one_cpu_device_with_bf16_matrix_units_runs_every_product_on_the_cpu_programs():
    assert _picked(program_config(_bf16(), "cpu")) == {
        "matmul": "cpu", "mlp_gate_dtype": "float32", "decode_cache_dtype": "float32", "decode_kernels": "prepared"}


def test_one_cpu_device_without_bf16_matrix_units_runs_only_float32_products_on_them():
    assert program_config(_bf16(), "cpu_fp32").matmul == "cpu_fp32"


def test_several_cpu_devices_run_the_plain_matmuls():
    assert hardware.resolve(_bf16(), "cpu", num_devices=8, bf16_matrix_units=True).matmul == "xla"


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_run_plain_matmuls_with_gate_and_caches_in_the_activation_dtype(backend):
    assert _picked(hardware.resolve(_bf16(), backend, num_devices=64)) == {
        "matmul": "xla", "mlp_gate_dtype": "bfloat16", "decode_cache_dtype": "bfloat16", "decode_kernels": "stored"}


def test_resolve_keeps_explicit_choices():
    config = _bf16().replace(matmul="cpu", decode_kernels="prepared")
    resolved = hardware.resolve(config, "gpu", num_devices=1)
    assert (resolved.matmul, resolved.decode_kernels, resolved.decode_cache_dtype) == ("cpu", "prepared", "bfloat16")
    assert hardware.resolve(resolved, "cpu", num_devices=1) is resolved


def test_resolve_reads_this_process_when_not_told():
    resolved = hardware.resolve(_bf16())
    assert resolved == hardware.resolve(_bf16(), jax.default_backend(), num_devices=jax.device_count(),
                                        bf16_matrix_units=hardware.cpu_has_bf16_matrix_units())


def test_bf16_matrix_units_are_read_from_the_cpu_flags(tmp_path):
    with_amx = tmp_path / "amx"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_tile amx_bf16\n")
    with_avx512_bf16 = tmp_path / "zen4"
    with_avx512_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert hardware.cpu_has_bf16_matrix_units(str(with_amx))
    assert hardware.cpu_has_bf16_matrix_units(str(with_avx512_bf16))
    assert not hardware.cpu_has_bf16_matrix_units(str(without))
    assert not hardware.cpu_has_bf16_matrix_units(str(tmp_path / "missing"))


@pytest.mark.parametrize("field,value", [("matmul", "fast"), ("decode_kernels", "cached"),
                                         ("mlp_gate_dtype", "float16"), ("decode_cache_dtype", "int8")])
def test_invalid_hardware_choices_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        dss_jax.get_config("t5_1_1_tiny", **{field: value})


def test_applying_an_unresolved_model_names_the_fix():
    tokens = np.ones((1, 3), np.int32)
    with pytest.raises(ValueError, match=r"matmul='auto'.*dss_jax\.hardware\.resolve\(config\)"):
        T5(dss_jax.get_config("t5_1_1_tiny")).apply({"params": random_params("t5_1_1_tiny")}, tokens, tokens)


def test_parameters_do_not_depend_on_the_hardware_choices():
    unresolved = jax.tree_util.tree_map(lambda leaf: (leaf.shape, leaf.dtype),
                                        abstract_params(dss_jax.get_config("t5_1_1_tiny")))
    for program in PROGRAMS:
        resolved = abstract_params(program_config(dss_jax.get_config("t5_1_1_tiny"), program))
        assert jax.tree_util.tree_map(lambda leaf: (leaf.shape, leaf.dtype), resolved) == unresolved


def test_the_model_and_decoding_read_nothing_from_the_process():
    for module in ("model.py", "decoding.py", "cpu_matmul.py"):
        source = (PACKAGE / module).read_text()
        for probe in ("default_backend()", "device_count()", "/proc/cpuinfo", "devices()"):
            assert probe not in source, (module, probe)
