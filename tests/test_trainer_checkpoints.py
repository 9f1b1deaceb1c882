"""Checkpoints: round trip with the data position, incomplete saves ignored, verification of what is
restored, fallback past damaged steps (moved aside, never deleted), SIGTERM flag.

(Initial parameters from another run or a Hugging Face directory: tests/test_initial_params.py.)
"""
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import checkpoints, get_config, trainer
from dss_jax.model import init_params

from checkpoint_damage_support import damages, flip_byte, largest_data_file


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


# ----------------------------------------------------------------------------- damage, verification, fallback


def _small_state(step: int) -> dict:
    return {"w": jnp.arange(3000, dtype=jnp.float32) * step, "b": jnp.full((40, 40), step, jnp.bfloat16),
            "step": jnp.asarray(step, jnp.int32)}


ABSTRACT = jax.eval_shape(lambda: _small_state(1))


def _three_steps(directory) -> checkpoints.CheckpointManager:
    manager = checkpoints.CheckpointManager(directory, save_every=1, keep=None, async_save=False)
    for step in (1, 2, 3):
        manager.save(step, _small_state(step), {"batches_consumed": step}, force=True)
    manager.close()
    return checkpoints.CheckpointManager(directory, save_every=1, keep=None, async_save=False)


DAMAGES = damages(truncate_to=100)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_latest_step_falls_back_to_the_previous_one_and_says_why(tmp_path, damage):
    manager = _three_steps(tmp_path / "ckpt")
    DAMAGES[damage](tmp_path / "ckpt" / "3")
    said = []
    state, position, step = manager.restore_latest(ABSTRACT, say=said.append)
    manager.close()
    assert step == 2 and position == {"batches_consumed": 2}
    assert _same(state, _small_state(2))
    assert len(said) == 1 and "resuming from step 2" in said[0] and "step 3: " in said[0]


def test_changed_bytes_are_refused_not_loaded(tmp_path):
    manager = _three_steps(tmp_path / "ckpt")
    flip_byte(largest_data_file(tmp_path / "ckpt" / "3"))
    with pytest.raises(checkpoints.CheckpointDamagedError, match=r"differ from what was saved \(w\)"):
        manager.restore(ABSTRACT, 3)
    manager.close()


def test_a_changed_data_position_is_refused_not_loaded(tmp_path):
    manager = _three_steps(tmp_path / "ckpt")
    position_file = tmp_path / "ckpt" / "3" / "data" / "metadata"
    position_file.write_text(position_file.read_text().replace("3", "7"))  # still valid JSON
    with pytest.raises(checkpoints.CheckpointDamagedError, match=r"data position \{'batches_consumed': 7\} differs"):
        manager.restore(ABSTRACT, 3)
    manager.close()


def test_damaged_steps_are_moved_aside_intact_and_the_run_saves_that_step_again(tmp_path):
    manager = _three_steps(tmp_path / "ckpt")
    victim = largest_data_file(tmp_path / "ckpt" / "3")
    os.truncate(victim, 100)
    files_before = sorted(p.relative_to(tmp_path / "ckpt" / "3") for p in (tmp_path / "ckpt" / "3").rglob("*"))
    manager.restore_latest(ABSTRACT, say=lambda _: None)
    aside = tmp_path / "ckpt_damaged" / "3"
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == files_before
    assert (aside / victim.relative_to(tmp_path / "ckpt" / "3")).stat().st_size == 100
    manager.save(3, _small_state(3), {"batches_consumed": 3}, force=True)  # the resumed run reaches step 3 again
    manager.close()
    assert checkpoints.checkpoint_steps(tmp_path / "ckpt") == [1, 2, 3]
    assert aside.is_dir(), "the damaged copy is kept"


def test_no_restorable_step_is_one_error_listing_every_step_and_reason(tmp_path):
    manager = _three_steps(tmp_path / "ckpt")
    for step in (1, 2, 3):
        os.truncate(largest_data_file(tmp_path / "ckpt" / str(step)), 10)
    with pytest.raises(checkpoints.CheckpointRestoreError) as raised:
        manager.restore_latest(ABSTRACT, say=lambda _: None)
    manager.close()
    message = str(raised.value)
    assert "3 step(s) tried" in message
    assert all(f"step {s}: " in message and "OUT_OF_RANGE" in message for s in (1, 2, 3))
    assert len(message.splitlines()) == 5, "one line per step, no TensorStore spec dump"
    assert checkpoints.checkpoint_steps(tmp_path / "ckpt") == [1, 2, 3], "nothing is moved when nothing restores"


def test_reading_params_for_eval_skips_a_damaged_step_without_moving_it(tmp_path):
    _three_steps(tmp_path / "ckpt").close()
    os.truncate(largest_data_file(tmp_path / "ckpt" / "3"), 100)
    abstract = {"w": ABSTRACT["w"], "b": ABSTRACT["b"]}
    said = []
    with pytest.raises(checkpoints.CheckpointRestoreError):  # params are under "params" in a trainer checkpoint
        checkpoints.restore_latest_params(tmp_path / "ckpt", abstract, say=said.append)
    manager = checkpoints.CheckpointManager(tmp_path / "params", save_every=1, async_save=False)
    for step in (1, 2):
        manager.save(step, {"params": {"w": _small_state(step)["w"]}, "step": step}, {"batches_consumed": step})
    manager.close()
    os.truncate(largest_data_file(tmp_path / "params" / "2"), 10)
    params, step = checkpoints.restore_latest_params(tmp_path / "params", {"w": ABSTRACT["w"]}, say=said.append)
    assert step == 1 and np.array_equal(np.asarray(params["w"]), np.asarray(_small_state(1)["w"]))
    assert said and "using checkpoint step 1" in said[-1]
    assert (tmp_path / "params" / "2").is_dir(), "a reader never moves a run's checkpoints"
    with pytest.raises(checkpoints.CheckpointDamagedError, match="cannot be read"):
        checkpoints.restore_latest_params(tmp_path / "params", {"w": ABSTRACT["w"]}, step=2)


def test_checksums_change_with_any_element_and_with_a_swap():
    base = {"x": jnp.arange(64, dtype=jnp.float32)}
    changed = {"x": base["x"].at[17].add(1e-6)}
    swapped = {"x": base["x"].at[3].set(4.0).at[4].set(3.0)}
    sums = [checkpoints.tree_checksums(t)["x"] for t in (base, changed, swapped)]
    assert sums[0] != sums[1] and sums[0] != sums[2]
    assert sums[0][0] == sums[2][0], "a swap keeps the plain sum; the position-weighted sum catches it"


def test_checksums_do_not_depend_on_how_an_array_is_sharded():
    import subprocess
    import sys

    script = (
        "import jax, jax.numpy as jnp\n"
        "from jax.sharding import Mesh, NamedSharding, PartitionSpec as P\n"
        "from dss_jax import checkpoints\n"
        "x = jnp.arange(4096 * 3, dtype=jnp.float32).reshape(64, 192) * 0.37\n"
        "mesh = Mesh(jax.devices(), ('d',))\n"
        "rows = jax.device_put(x, NamedSharding(mesh, P('d', None)))\n"
        "cols = jax.device_put(x, NamedSharding(mesh, P(None, 'd')))\n"
        "sums = [checkpoints.tree_checksums({'x': a})['x'] for a in (x, rows, cols)]\n"
        "assert len(rows.sharding.device_set) == 4 and sums[0] == sums[1] == sums[2], sums\n"
        "print('same', sums[0])\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            cwd=pathlib.Path(__file__).resolve().parents[1])
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]
