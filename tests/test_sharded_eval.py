"""Evaluation decoded on a training mesh (`dss_jax.evaluation`, `dss_jax.decoding`'s
sharded decoding): on 8 simulated CPU devices, meshes data 2 x model 4 and data 4 x
model 2 predict exactly what one device predicts (float32), the parameters and the batch
are sharded as the rules say, and the last, partial batch is handled. In bfloat16 only
data parallelism keeps every sum: model parallelism rounds its partial products to bf16
apart (1 of these 13 tiny-model predictions changed on data 2 x model 4), so the bf16
check uses data 8 x model 1.

The devices are simulated in a subprocess (XLA_FLAGS must be set before jax is imported).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

NUM_EXAMPLES = 13  # batches of 8: the last one has 5 rows
SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    import trainer_support  # registers trainer_test_label (pass-through vocabulary of 128 ids)
    from model_support import random_params
    import dss_jax
    from dss_jax import decoding, evaluation, hardware, partitioning
    from dss_jax.configs import HARDWARE_FIELDS

    assert jax.device_count() == 8, jax.devices()
    config = hardware.resolve(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0))
    model = dss_jax.T5(config)
    params = random_params("t5_1_1_tiny")
    kwargs = dict(sequence_lengths={"inputs": 12, "targets": 4}, batch_size=8, max_decode_len=4,
                  max_examples=int(sys.argv[2]))
    rules = partitioning.logical_axis_rules()
    spec = lambda array: [str(axis) for axis in array.sharding.spec]
    shard = lambda array: list(array.addressable_shards[0].data.shape)
    out = {"config": {field: getattr(config, field) for field in HARDWARE_FIELDS}}

    def record(result):
        return {"n": result.num_examples, "accuracy": result.accuracy,
                "predictions": [str(r["raw"]) for r in result.predictions],
                "targets": [r["target"] for r in result.predictions]}

    out["single"] = record(evaluation.evaluate_tasks(model, params, ["trainer_test_label"], "validation",
                                                     **kwargs)["trainer_test_label"])
    for data, parallel in ((2, 4), (4, 2)):
        mesh = partitioning.make_mesh(data, parallel)
        placed = jax.device_put(params, partitioning.param_shardings(model, mesh, rules))  # as training leaves them
        result = evaluation.evaluate_tasks(model, placed, ["trainer_test_label"], "validation", mesh=mesh,
                                           rules=rules, **kwargs)["trainer_test_label"]
        decoder = evaluation.batch_decoder(model, placed, 4, mesh, rules)
        weights = decoder.weights
        wi = weights.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        step = weights.step_kernels["decoder"]["logits_dense"]["kernel_transposed"]
        batch = decoder.global_batch(np.zeros((8, 12), np.int32), 8)
        out[f"{data}x{parallel}_rows"] = [decoder.host_rows(8).start, decoder.host_rows(8).stop]
        tokens = decoding.sharded_greedy_decode(config, 4, mesh, rules)(weights, batch, 1)
        out[f"{data}x{parallel}"] = {
            **record(result),
            "params_kept": wi is placed["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"],
            "wi_spec": spec(wi), "wi_shard": shard(wi), "wi_shape": list(wi.shape),
            "embedding_spec": spec(weights.params["token_embedder"]["embedding"]),
            "step_spec": spec(step), "step_shard": shard(step), "step_shape": list(step.shape),
            "batch_spec": spec(batch), "batch_shard": shard(batch),
            "tokens_spec": spec(tokens), "tokens_shard": shard(tokens),
        }
    # bfloat16, scanned layers: kernels cast once on the mesh. Data parallelism alone changes
    # no sum (model parallelism would: its partial products are rounded to bf16 apart).
    from dss_jax.model import stack_layers
    bf16 = hardware.resolve(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0, dtype="bfloat16", scan_layers=True))
    stacked = stack_layers(params, config)
    out["bf16_single"] = record(evaluation.evaluate_task(dss_jax.T5(bf16), stacked, "trainer_test_label",
                                                         "validation", **kwargs))
    out["bf16_8x1"] = record(evaluation.evaluate_task(dss_jax.T5(bf16), stacked, "trainer_test_label", "validation",
                                                      mesh=partitioning.make_mesh(8, 1), rules=rules, **kwargs))
    lowered = decoding.lower_sharded_greedy_decode(config, 4, partitioning.make_mesh(2, 4), rules, 8, 12)
    out["lowered_compiles"] = lowered.compile() is not None
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def sharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir, str(NUM_EXAMPLES)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("mesh", ["2x4", "4x2"])
def test_sharded_predictions_equal_the_single_device_predictions_in_example_order(sharded, mesh):
    single = sharded["single"]
    assert single["n"] == NUM_EXAMPLES and len(single["predictions"]) == NUM_EXAMPLES
    assert len(set(single["predictions"])) > 1, "degenerate model output: the comparison would mean little"
    assert sharded[mesh]["predictions"] == single["predictions"]
    assert sharded[mesh]["targets"] == single["targets"]
    assert sharded[mesh]["accuracy"] == single["accuracy"]


def test_bfloat16_scanned_decoding_split_over_data_predicts_what_one_device_predicts(sharded):
    assert len(set(sharded["bf16_single"]["predictions"])) > 1
    assert sharded["bf16_8x1"]["predictions"] == sharded["bf16_single"]["predictions"]


def test_the_decoding_program_on_8_cpu_devices_is_the_multi_device_one(sharded):
    assert sharded["config"] == {"matmul": "xla", "mlp_gate_dtype": "float32", "decode_cache_dtype": "float32",
                                 "decode_kernels": "prepared"}


@pytest.mark.parametrize("mesh,model_axis", [("2x4", 4), ("4x2", 2)])
def test_params_stay_sharded_as_training_placed_them(sharded, mesh, model_axis):
    r = sharded[mesh]
    embed, mlp = r["wi_shape"]
    assert r["params_kept"], "evaluation must use the placed arrays, not copies"
    assert r["wi_spec"] == ["None", "model"] and r["wi_shard"] == [embed, mlp // model_axis]
    assert r["embedding_spec"] == ["model", "None"]


@pytest.mark.parametrize("mesh,model_axis", [("2x4", 4), ("4x2", 2)])
def test_per_step_kernel_copies_are_sharded_like_their_kernels(sharded, mesh, model_axis):
    r = sharded[mesh]
    vocab, embed = r["step_shape"]  # logits_dense [embed, vocab] copied as [vocab, embed]
    assert r["step_spec"] == ["model", "None"] and r["step_shard"] == [vocab // model_axis, embed]


@pytest.mark.parametrize("mesh,data_axis", [("2x4", 2), ("4x2", 4)])
def test_the_batch_and_the_decoded_tokens_are_split_over_data(sharded, mesh, data_axis):
    r = sharded[mesh]
    assert r["batch_spec"] == ["data"] and r["batch_shard"] == [8 // data_axis, 12]
    assert r["tokens_spec"] == ["data"] and r["tokens_shard"] == [8 // data_axis, 4]


@pytest.mark.parametrize("mesh", ["2x4", "4x2"])
def test_one_host_gives_every_row_of_a_batch(sharded, mesh):
    assert sharded[f"{mesh}_rows"] == [0, 8]


def test_sharded_decoding_compiles_ahead_of_time_from_abstract_shapes(sharded):
    assert sharded["lowered_compiles"]
