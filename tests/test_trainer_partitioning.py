"""Partitioning: rules, shardings of params / optimizer state, 2x4 mesh == 1 device.

The multi-device checks run in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before jax is imported, so not in the pytest process).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from dss_jax import partitioning

MULTI_DEVICE_SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    sys.path.insert(0, sys.argv[1])
    import trainer_support as support
    from dss_jax import T5, get_config, losses, partitioning, trainer
    from dss_jax.model import init_params

    assert len(jax.devices()) == 8, jax.devices()
    from dss_jax import hardware

    config = hardware.resolve(get_config("t5_1_1_tiny", dropout_rate=0.0))
    model = T5(config)
    params0 = init_params(config, 0)
    rng = np.random.default_rng(0)
    batches = [support.random_batch(rng, rows=8, enc_len=12, dec_len=6) for _ in range(3)]
    out = {}

    def run(mesh, fsdp, name, steps=3):
        rules = partitioning.logical_axis_rules(fsdp=fsdp)
        opt = trainer.make_optimizer("adamw", 1e-2, clip=1.0)
        state, shardings = trainer.create_sharded_train_state(model, opt, jax.random.PRNGKey(1), ((1, 1), (1, 1)),
                                                              mesh, rules, params=params0)
        bsh = partitioning.batch_shardings(mesh, list(batches[0]))
        step = trainer.make_train_step(model, opt, losses.LossConfig("paired"), mesh, shardings, bsh, rules)
        for b in batches[:steps]:
            state, metrics = step(state, partitioning.make_global_batch(b, bsh))
        wi = state.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        mu = state.opt_state[1][0].mu["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        emb = state.params["token_embedder"]["embedding"]
        out[name] = {
            "wi_spec": [str(a) for a in wi.sharding.spec], "wi_shard": list(wi.addressable_shards[0].data.shape),
            "mu_spec": [str(a) for a in mu.sharding.spec], "mu_shard": list(mu.addressable_shards[0].data.shape),
            "emb_spec": [str(a) for a in emb.sharding.spec], "wi_shape": list(wi.shape),
            "count_spec": [str(a) for a in state.opt_state[1][0].count.sharding.spec],
        }
        return jax.device_get(state.params)

    single = run(partitioning.make_mesh(1, 1, devices=jax.devices()[:1]), False, "single")
    sharded = run(partitioning.make_mesh(2, 4), False, "mesh_2x4")
    run(partitioning.make_mesh(2, 4), True, "mesh_2x4_fsdp", steps=0)  # shardings only (saves a compile)
    diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in
                            zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    out["max_diff_2x4"] = diff(single, sharded)
    out["params_moved"] = diff(single, jax.device_get(params0))
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def multi_device_result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT, tests_dir], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_mesh_2x4_gives_the_same_params_as_one_device_after_3_steps(multi_device_result):
    assert multi_device_result["params_moved"] > 1e-3, "the steps must change the params for this to mean anything"
    assert multi_device_result["max_diff_2x4"] < 1e-5


def test_params_and_optimizer_state_are_sharded_as_the_rules_say(multi_device_result):
    r = multi_device_result["mesh_2x4"]
    embed, mlp = r["wi_shape"]
    assert r["wi_spec"] == ["None", "model"]  # [embed, mlp]: mlp -> model, embed replicated
    assert r["wi_shard"] == [embed, mlp // 4]
    assert r["mu_spec"] == r["wi_spec"] and r["mu_shard"] == r["wi_shard"]  # Adam's mu mirrors the param
    assert r["emb_spec"] == ["model", "None"]  # [vocab, embed]
    assert r["count_spec"] == []  # scalars are replicated


def test_fsdp_also_shards_params_and_optimizer_state_over_data(multi_device_result):
    r = multi_device_result["mesh_2x4_fsdp"]
    embed, mlp = r["wi_shape"]
    assert r["wi_spec"] == ["data", "model"]
    assert r["wi_shard"] == [embed // 2, mlp // 4]
    assert r["mu_spec"] == ["data", "model"] and r["mu_shard"] == r["wi_shard"]


def test_rules_put_batch_on_data_and_keep_activation_embed_unsharded_under_fsdp():
    import flax.linen as nn

    rules = partitioning.logical_axis_rules(fsdp=True)
    spec = nn.logical_to_mesh_axes(("batch", "length", "embed"), rules)
    assert tuple(spec) == ("data", None, None)
    assert tuple(nn.logical_to_mesh_axes(("embed", "mlp"), rules)) == ("data", "model")
    assert tuple(nn.logical_to_mesh_axes(("embed", "mlp"), partitioning.logical_axis_rules())) == (None, "model")


def test_mesh_shape_must_match_the_device_count():
    with pytest.raises(ValueError, match="devices"):
        partitioning.make_mesh(3, 5)


def test_distributed_init_is_requested_by_flag_or_environment():
    assert partitioning.distributed_requested(None, {}) is False
    assert partitioning.distributed_requested(None, {"DSS_DISTRIBUTED": "1"}) is True
    assert partitioning.distributed_requested(None, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}) is True
    assert partitioning.distributed_requested(False, {"DSS_DISTRIBUTED": "1"}) is False


def test_host_shard_info_and_local_batch_size_on_one_host():
    info = partitioning.host_shard_info()
    assert (info.index, info.num_shards) == (0, 1)
    assert partitioning.local_batch_size(64) == 64


def test_a_step_compiled_from_the_abstract_state_runs_on_the_real_state():
    """`abstract_sharded_train_state` allocates nothing, yet is enough to compile the step
    ahead of time; the program then takes the real state and matches the jitted step."""
    import jax
    import numpy as np

    import trainer_support as support
    from dss_jax import T5, get_config, losses, trainer

    from dss_jax import hardware

    model = T5(hardware.resolve(get_config("t5_1_1_tiny", dropout_rate=0.0)))
    optimizer = trainer.make_optimizer("adamw", 1e-2)
    mesh = partitioning.make_mesh(1, 1, devices=jax.devices()[:1])
    rules = partitioning.logical_axis_rules()
    rng, shapes = jax.random.PRNGKey(0), ((1, 1), (1, 1))
    abstract, shardings = trainer.abstract_sharded_train_state(model, optimizer, rng, shapes, mesh, rules)
    for leaf, sharding in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(shardings)):
        assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding == sharding
    batch = support.random_batch(np.random.default_rng(0), rows=4, enc_len=12, dec_len=6)
    step = trainer.make_train_step(model, optimizer, losses.LossConfig("paired"), mesh, shardings,
                                   partitioning.batch_shardings(mesh, list(batch)), rules)
    with trainer.sharding_context(mesh, rules):
        compiled = step.jitted.lower(abstract, batch).compile()
    _, ahead = compiled(trainer.create_sharded_train_state(model, optimizer, rng, shapes, mesh, rules)[0], batch)
    _, jitted = step(trainer.create_sharded_train_state(model, optimizer, rng, shapes, mesh, rules)[0], batch)
    assert float(ahead["loss"]) == float(jitted["loss"])
