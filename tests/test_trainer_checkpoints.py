"""Checkpoints: round trip with the data position, incomplete saves ignored, initial params, SIGTERM flag."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import checkpoints, get_config, partitioning, trainer
from dss_jax.model import T5, abstract_params, init_params


@pytest.fixture(scope="module")
def tiny():
    config = get_config("t5_1_1_tiny")
    return config, init_params(config, 0)


def _state(params):
    opt = trainer.make_optimizer("adamw", 1e-3)
    return trainer.TrainState(step=jnp.asarray(3, jnp.int32), params=params, opt_state=opt.init(params),
                              rng=jax.random.PRNGKey(5))


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_state_and_data_position_round_trip(tmp_path, tiny):
    _, params = tiny
    state = _state(params)
    manager = checkpoints.CheckpointManager(tmp_path / "ckpt", save_every=1)
    manager.save(3, state, {"batches_consumed": 3, "seed": 0})
    manager.wait_until_finished()
    restored, position = manager.restore(jax.eval_shape(lambda: state))
    manager.close()
    assert position == {"batches_consumed": 3, "seed": 0}
    assert _same(restored, state)


def test_an_unfinished_save_is_not_a_checkpoint(tmp_path, tiny):
    _, params = tiny
    manager = checkpoints.CheckpointManager(tmp_path / "ckpt", save_every=1)
    manager.save(2, _state(params), {"batches_consumed": 2})
    manager.close()
    (tmp_path / "ckpt" / "4.orbax-checkpoint-tmp-1234").mkdir()  # what a SIGKILL mid-save leaves behind
    assert checkpoints.latest_checkpoint_step(tmp_path / "ckpt") == 2


def test_initial_params_from_an_earlier_runs_checkpoint(tmp_path, tiny):
    config, params = tiny
    manager = checkpoints.CheckpointManager(tmp_path / "ckpt", save_every=1)
    manager.save(3, _state(params), {"batches_consumed": 3})
    manager.close()
    loaded = checkpoints.load_initial_params(str(tmp_path / "ckpt"), abstract_params(config))
    assert _same(loaded, params)


def test_initial_params_from_a_hugging_face_directory(tmp_path, tiny):
    from dss_jax.hf_checkpoint import export_hf_checkpoint

    config, params = tiny
    export_hf_checkpoint(config, params, tmp_path / "hf")
    mesh = partitioning.make_mesh()
    shardings = partitioning.param_shardings(T5(config), mesh, partitioning.logical_axis_rules())
    loaded = checkpoints.load_initial_params(str(tmp_path / "hf"),
                                             partitioning.with_sharding(abstract_params(config), shardings))
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


def test_missing_initial_checkpoint_is_a_clear_error(tmp_path, tiny):
    config, _ = tiny
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoints.load_initial_params(str(tmp_path / "nothing"), abstract_params(config))


def test_preemption_guard_turns_sigterm_into_a_flag_and_restores_the_handler():
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")  # SIGTERM would end the worker
    before = signal.getsignal(signal.SIGTERM)
    with checkpoints.PreemptionGuard() as guard:
        assert not guard.triggered
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.triggered and guard.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
