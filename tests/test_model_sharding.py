"""The model's logical sharding constraints on a real mesh: 8 simulated CPU devices, data 2 x
model 4, parameters and tokens passed replicated, so every sharded activation comes from a
constraint. Deleting any constraint site changes what these tests count.

The devices are simulated in a subprocess (XLA_FLAGS must be set before jax is imported).
"""
import collections
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import json, sys
    import flax.linen as nn, jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from model_support import random_params
    import dss_jax
    from dss_jax import hardware, partitioning

    assert jax.device_count() == 8, jax.devices()
    config = hardware.resolve(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0))
    params = random_params("t5_1_1_tiny")
    encoder = np.random.RandomState(0).randint(2, 128, size=(8, 12)).astype(np.int32)
    decoder = encoder[:, :6]
    forward = jax.jit(lambda p, e, d: dss_jax.T5(config).apply({"params": p}, e, d, enable_dropout=False))
    single = np.asarray(forward(params, encoder, decoder))
    with jax.set_mesh(partitioning.make_mesh(2, 4)), nn.logical_axis_rules(partitioning.logical_axis_rules()):
        text = forward.lower(params, encoder, decoder).as_text()
        logits = forward(params, encoder, decoder)
    print("RESULT " + json.dumps({
        "lowered": text, "logits_spec": [str(axis) for axis in logits.sharding.spec],
        "max_diff": float(np.max(np.abs(np.asarray(logits) - single)))}))
''')


@pytest.fixture(scope="module")
def on_mesh():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir], env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def _constraints(lowered: str) -> collections.Counter:
    """(mesh axes per dimension, shape) of every sharding constraint in the lowered module."""
    found = re.findall(r"sdy\.sharding_constraint %\S+ <@mesh, \[(.*?)\]> : tensor<([\dx]+)x\w+>", lowered)
    return collections.Counter((axes.replace('"', ""), shape) for axes, shape in found)


def test_logits_come_out_sharded_batch_over_data_and_vocab_over_model(on_mesh):
    assert on_mesh["logits_spec"] == ["data", "None", "model"]


def test_every_layer_constrains_its_activations(on_mesh):
    """Tiny T5: 2 encoder + 2 decoder layers, d_model 32, 4 heads of 8, d_ff 64, batch 8,
    encoder length 12, decoder length 6."""
    counts = _constraints(on_mesh["lowered"])
    # residual stream [batch, length, embed]: after the embedding, and twice in each layer
    assert counts[("{data}, {}, {}", "8x12x32")] == 1 + 2 * 2
    assert counts[("{data}, {}, {}", "8x6x32")] == 1 + 2 * 2
    # heads [batch, length, heads, kv]: q, k, v and the output of each attention
    assert counts[("{data}, {}, {model}, {}", "8x12x4x8")] == 2 * 4 + 2 * 2  # + cross-attention keys/values
    assert counts[("{data}, {}, {model}, {}", "8x6x4x8")] == 2 * 4 + 2 * 2  # self q, k, v, out; cross q, out
    # MLP hidden [batch, length, mlp]
    assert counts[("{data}, {}, {model}", "8x12x64")] == 2
    assert counts[("{data}, {}, {model}", "8x6x64")] == 2
    assert counts[("{data}, {}, {model}", "8x6x128")] == 1  # logits [batch, length, vocab]
    assert sum(counts.values()) == 39


def test_the_sharded_forward_gives_the_single_device_logits(on_mesh):
    assert on_mesh["max_diff"] < 1e-5
