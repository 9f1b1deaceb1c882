"""Named T5 configs: published sizes, overrides, validation, the listing CLI, light import."""
import json
import subprocess
import sys

import pytest

import dss_jax
from dss_jax.configs import PUBLISHED_PARAM_COUNTS, count_params


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAM_COUNTS))
def test_named_config_parameter_count_is_within_one_percent_of_published(name):
    count = count_params(dss_jax.get_config(name))
    assert abs(count - PUBLISHED_PARAM_COUNTS[name]) / PUBLISHED_PARAM_COUNTS[name] < 0.01


def test_every_published_size_is_listed_with_tiny_test_configs():
    names = dss_jax.list_configs()
    assert set(PUBLISHED_PARAM_COUNTS) <= set(names)
    assert {"t5_1_1_tiny", "t5_1_0_tiny"} <= set(names)


def test_t5_1_1_and_t5_1_0_styles_differ_as_published():
    v11, v10 = dss_jax.get_config("t5_1_1_base"), dss_jax.get_config("t5_1_0_base")
    assert (v11.mlp_activation, v11.tie_word_embeddings, v11.scale_decoder_outputs) == ("gated-gelu", False, False)
    assert (v10.mlp_activation, v10.tie_word_embeddings, v10.scale_decoder_outputs) == ("relu", True, True)
    assert v11.vocab_size == v10.vocab_size == 32128


def test_get_config_applies_overrides():
    config = dss_jax.get_config("t5_1_1_small", dtype="bfloat16", scan_layers=True, remat_policy="full")
    assert (config.dtype, config.scan_layers, config.remat_policy) == ("bfloat16", True, "full")
    assert config.d_model == 512


def test_dtype_may_be_given_as_a_numpy_dtype():
    import jax.numpy as jnp

    assert dss_jax.get_config("t5_1_1_tiny", dtype=jnp.bfloat16).dtype == "bfloat16"


def test_unknown_config_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="t5_1_1_small"):
        dss_jax.get_config("t5_1_1_medium")


@pytest.mark.parametrize("field,value", [("mlp_activation", "gated-silu"), ("remat_policy", "some"),
                                         ("dtype", "float16"), ("d_model", 0), ("dropout_rate", 1.0),
                                         ("logits_dot_in_fp32", "no")])
def test_invalid_config_values_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        dss_jax.get_config("t5_1_1_tiny", **{field: value})


def test_configs_are_hashable_for_compile_caches():
    assert hash(dss_jax.get_config("t5_1_1_tiny")) == hash(dss_jax.get_config("t5_1_1_tiny"))


def test_cli_lists_every_config_with_parameter_counts_as_json():
    result = subprocess.run([sys.executable, "-m", "dss_jax.configs", "--json"], capture_output=True, text=True,
                            check=True, timeout=300)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == set(dss_jax.list_configs())
    assert rows["t5_1_1_tiny"]["params"] == count_params(dss_jax.get_config("t5_1_1_tiny"))
    assert rows["t5_1_1_xxl"]["params"] > 11e9


def test_importing_dss_jax_does_not_import_tensorflow_seqio_or_torch():
    code = ("import sys, dss_jax; from dss_jax import T5, greedy_decode, load_hf_checkpoint; "
            "heavy = [m for m in ('tensorflow', 'seqio', 'torch', 'transformers') if m in sys.modules]; "
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "[]"
