"""The train step compiled ahead of time per batch shape (``dss_jax.compiled_steps``): every
shape of the batches read ahead is compiled before the first step, a shape first met later
is compiled when it comes and counted, and the compiled step computes what the jitted one does."""
import jax
import numpy as np
import pytest

import trainer_support as support
from dss_jax import compiled_steps, losses, partitioning, trainer
from dss_jax.model import T5
from model_support import tiny_config

FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "task_ids")


@pytest.fixture(scope="module")
def parts():
    model = T5(tiny_config(vocab_size=support.VOCAB_SIZE))
    mesh, rules = partitioning.make_mesh(1, 1), partitioning.logical_axis_rules()
    optimizer = trainer.make_optimizer("adamw", learning_rate=1e-3)
    abstract, shardings = trainer.abstract_sharded_train_state(model, optimizer, jax.random.PRNGKey(0),
                                                               ((1, 1), (1, 1)), mesh, rules)
    batch_shardings = partitioning.batch_shardings(mesh, FEATURES)
    step = trainer.make_train_step(model, optimizer, losses.LossConfig(), mesh, shardings, batch_shardings, rules)

    def fresh_state():
        return trainer.create_sharded_train_state(model, optimizer, jax.random.PRNGKey(0), ((1, 1), (1, 1)),
                                                  mesh, rules)[0]

    return step, abstract, batch_shardings, mesh, rules, fresh_state


def _batch(rows, enc_len, dec_len, seed=0):
    return support.random_batch(np.random.default_rng(seed), rows, enc_len, dec_len)


def test_every_shape_read_ahead_is_compiled_once_before_the_first_step(parts):
    step, abstract, batch_shardings, mesh, rules, _ = parts
    steps = compiled_steps.CompiledSteps(step, abstract, batch_shardings, mesh, rules)
    ahead = [_batch(4, 12, 6), _batch(4, 16, 6, seed=1), _batch(4, 12, 6, seed=2)]
    assert steps.prepare(ahead) == 2
    assert [dict(key)["encoder_input_tokens"] for key in steps.shapes] == [(4, 12), (4, 16)]
    assert steps.prepare(ahead) == 0


def test_a_shape_first_met_later_is_compiled_when_it_comes_and_counted(parts):
    step, abstract, batch_shardings, mesh, rules, fresh_state = parts
    messages = []
    steps = compiled_steps.CompiledSteps(step, abstract, batch_shardings, mesh, rules, log=messages.append)
    steps.prepare([_batch(2, 8, 4)])
    state, _ = steps(fresh_state(), partitioning.make_global_batch(_batch(2, 8, 4), batch_shardings))
    assert steps.late_compiles == 0 and not messages
    steps(state, partitioning.make_global_batch(_batch(2, 10, 4), batch_shardings))
    assert steps.late_compiles == 1 and "not seen before" in messages[0]


def test_the_compiled_step_computes_what_the_jitted_step_does(parts):
    step, abstract, batch_shardings, mesh, rules, fresh_state = parts
    steps = compiled_steps.CompiledSteps(step, abstract, batch_shardings, mesh, rules)
    batch = _batch(2, 8, 4, seed=3)
    steps.prepare([batch])
    compiled_state, compiled_metrics = steps(fresh_state(), partitioning.make_global_batch(batch, batch_shardings))
    jitted_state, jitted_metrics = step(fresh_state(), partitioning.make_global_batch(batch, batch_shardings))
    assert float(compiled_metrics["loss"]) == float(jitted_metrics["loss"])
    for a, b in zip(jax.tree_util.tree_leaves(compiled_state.params), jax.tree_util.tree_leaves(jitted_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
