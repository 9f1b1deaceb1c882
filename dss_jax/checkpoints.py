"""Orbax checkpoints of the train state and the input position, with preemption handling.

A checkpoint step directory holds two items:
* ``state``: the ``TrainState`` (step, params, optimizer state, RNG), saved
  asynchronously by ``ocp.CheckpointManager`` every ``save_every`` steps, keeping the
  last ``keep`` ones;
* ``data``: JSON with the input position (batches consumed, shuffle seed, task name),
  so a restarted run continues in the data exactly where it stopped.

Orbax only lists a step once it is completely written, so a run killed with SIGKILL
mid-save restarts from the previous complete step.  ``PreemptionGuard`` turns SIGTERM
(the signal Cloud TPU / SLURM send before preemption) into a flag the train loop
checks once per step: it then saves and exits cleanly.

Initial weights for step 0 come from a Hugging Face directory
(``dss_jax.load_hf_checkpoint``) or from the ``params`` of another run's checkpoint.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from dss_jax import storage

STATE_ITEM = "state"
DATA_ITEM = "data"


class CheckpointManager:
    """``ocp.CheckpointManager`` for (state, data position) pairs."""

    def __init__(self, directory: str | os.PathLike, save_every: int = 1000, keep: int | None = 3,
                 async_save: bool = True):
        self.directory = storage.run_path(directory)
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=save_every,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_position: Mapping[str, Any], force: bool = False) -> bool:
        """Start an (async) save; returns whether one was started (``save_every`` / ``force``)."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                       DATA_ITEM: ocp.args.JsonSave(dict(data_position))}),
            force=force,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, data position) of ``step`` (default latest), placed as ``abstract_state`` says.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` carrying shardings.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                                       DATA_ITEM: ocp.args.JsonRestore()}),
        )
        return restored[STATE_ITEM], dict(restored[DATA_ITEM])

    def restore_data_position(self, step: int | None = None) -> dict:
        """Only the data position of ``step`` (default latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(**{DATA_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[DATA_ITEM])

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def latest_checkpoint_step(directory: str | os.PathLike) -> int | None:
    """Latest complete step in a checkpoint directory, or None (no directory / no step)."""
    directory = storage.run_path(directory)
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory, item_names=(STATE_ITEM, DATA_ITEM))
    try:
        return manager.latest_step()
    finally:
        manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: int | None = None) -> Any:
    """Only the ``params`` of a trainer checkpoint (optimizer state etc. are not read).

    ``directory`` is a run's checkpoint directory (``MODEL_DIR/checkpoints``) or one step
    directory inside it.  ``abstract_params`` gives shapes, dtypes and shardings.
    """
    directory = storage.run_path(directory)
    step_dir = directory
    if not (directory / STATE_ITEM).is_dir():
        step = latest_checkpoint_step(directory) if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        step_dir = directory / str(step)
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            step_dir / STATE_ITEM,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
    return restored["params"]


def load_initial_params(source: str, abstract_params: Any) -> Any:
    """Params to start from: a Hugging Face directory (``config.json`` present) or a trainer checkpoint."""
    path = storage.run_path(source)
    if not path.exists():
        raise FileNotFoundError(f"initial checkpoint {source} does not exist")
    if (path / "config.json").is_file():
        from dss_jax import hf_checkpoint

        _, params = hf_checkpoint.load_hf_checkpoint(path)
        return _place_like(params, abstract_params, source)
    return restore_params(path, abstract_params)


def _place_like(params: Any, abstract_params: Any, source: str) -> Any:
    expected = jax.tree_util.tree_structure(abstract_params)
    got = jax.tree_util.tree_structure(params)
    if expected != got:
        raise ValueError(f"parameters in {source} do not match the model's structure:\n{got}\nvs\n{expected}")

    def place(value, target):
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"parameter shape {value.shape} in {source} != model's {target.shape}")
        sharding = getattr(target, "sharding", None)
        value = value.astype(target.dtype)
        return jax.device_put(value, sharding) if sharding is not None else jax.device_put(value)

    return jax.tree_util.tree_map(place, params, abstract_params)


class PreemptionGuard:
    """Records SIGTERM (and optionally SIGINT) so the train loop can save and stop cleanly."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._signals = tuple(signals)
        self._previous: dict[int, Any] = {}
        self.received: int | None = None

    def _handler(self, signum, frame):  # noqa: ARG002 -- signal handler signature
        self.received = signum
        self._event.set()

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def triggered(self) -> bool:
        return self._event.is_set()
