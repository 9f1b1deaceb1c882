"""Orbax checkpoints of the train state and the input position: verified, with fallback.

A checkpoint step directory (``MODEL_DIR/checkpoints/<step>``) holds three items:
* ``state``: the ``TrainState`` (step, params, optimizer state, RNG), saved
  asynchronously by ``ocp.CheckpointManager`` every ``save_every`` steps, keeping the
  last ``keep`` ones;
* ``data``: JSON with the input position (batches consumed, shuffle seed, task name),
  so a restarted run continues in the data exactly where it stopped;
* ``checksums``: JSON with two 32-bit checksums of every array of the state
  (``tree_checksums``) and the SHA-256 of the data position, written in the same atomic
  step as the state itself.

Orbax only lists a step once it is completely written, so a run killed with SIGKILL
mid-save restarts from the previous complete step.  Every restore recomputes the
checksums of what it read and compares them with the saved ones, so a checkpoint whose
bytes changed is refused instead of loaded (orbax restores a flipped byte silently).
``CheckpointManager.restore_latest`` falls back to the newest step that restores and
verifies, says which steps it skipped and why, and moves those (never deletes them) to
``<checkpoints>_damaged/`` so that orbax's ``max_to_keep`` clean-up and the resumed run's
own saves at the same step numbers cannot touch them.  When no step restores it raises
``CheckpointRestoreError`` listing every step and its reason.

``PreemptionGuard`` turns SIGTERM (the signal Cloud TPU / SLURM send before preemption)
into a flag the train loop checks once per step: it then saves and exits cleanly.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dss_jax import storage

STATE_ITEM = "state"
DATA_ITEM = "data"
CHECKSUM_ITEM = "checksums"
CHECKSUM_ALGORITHM = "uint32 sum and position-weighted sum of each array's bits (dss_jax.checkpoints)"
DAMAGED_SUFFIX = "_damaged"


class CheckpointDamagedError(ValueError):
    """A checkpoint step cannot be restored, or what it restores differs from what was saved."""


class CheckpointRestoreError(RuntimeError):
    """No checkpoint step of a run restores; the message lists every step and why."""


# ----------------------------------------------------------------------------- checksums


def _bits(x: jax.Array) -> jax.Array:
    """The bits of an array as uint32 values (8-byte dtypes give a trailing axis of 2)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return x.astype(jnp.uint32)  # bool, int8, uint8


def _array_checksum(x: jax.Array) -> jax.Array:
    """[sum of the bits, sum of bits * a per-position weight], both modulo 2**32.

    Integer sums modulo 2**32 do not depend on the order of the reduction, so the value
    is the same whatever mesh or sharding the array is on.
    """
    bits = _bits(x)
    position = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= bits.shape[axis]
    weight = position * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


_checksum_jit = jax.jit(_array_checksum)  # one small program per (shape, dtype, sharding): layers share them


def _key_name(entry) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def tree_checksums(tree: Any, prefix: str = "") -> dict[str, list[int]]:
    """``{"params/encoder/...": [sum, weighted sum]}`` for every array leaf of ``tree``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [prefix + "/".join(_key_name(e) for e in path) for path, _ in flat]
    values = jax.device_get([_checksum_jit(jnp.asarray(leaf)) for _, leaf in flat])
    return {name: [int(v) for v in np.asarray(value)] for name, value in zip(names, values)}


def position_digest(position: Mapping[str, Any]) -> str:
    """SHA-256 of a data position's canonical JSON."""
    return hashlib.sha256(json.dumps(dict(position), sort_keys=True).encode()).hexdigest()


def verify_checksums(restored: Mapping[str, list[int]], saved: Mapping[str, Any], step_dir) -> None:
    """Raise ``CheckpointDamagedError`` naming the arrays whose checksums differ from ``saved``."""
    arrays = saved.get("arrays", {})
    missing = sorted(set(restored) - set(arrays))
    changed = sorted(name for name in restored if name in arrays and list(arrays[name]) != restored[name])
    if missing or changed:
        names = changed[:3] + missing[:3]
        raise CheckpointDamagedError(
            f"{step_dir}: {len(changed)} array(s) differ from what was saved"
            + (f", {len(missing)} have no saved checksum" if missing else "")
            + f" ({', '.join(names)}{', ...' if len(changed) + len(missing) > len(names) else ''}); "
            f"its bytes changed after it was written")


def _reason(err: BaseException) -> str:
    """One line saying why a restore failed: the innermost cause (orbax wraps TensorStore's in pages of spec)."""
    seen = []
    while err is not None and err not in seen and not isinstance(err, (StopIteration, StopAsyncIteration)):
        seen.append(err)  # control-flow exceptions in the chain are how the failure was handled, not why
        err = err.__cause__ or err.__context__
    inner = seen[-1]
    lines = str(inner).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(inner).__name__}: {first[:240]}{'...' if len(first) > 240 else ''}"


# ----------------------------------------------------------------------------- the manager


class CheckpointManager:
    """``ocp.CheckpointManager`` for verified (state, data position) pairs."""

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
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=(STATE_ITEM, DATA_ITEM, CHECKSUM_ITEM))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_position: Mapping[str, Any], force: bool = False) -> bool:
        """Start an (async) save; returns whether one was started (``save_every`` / ``force``)."""
        if not force and not self._manager.should_save(step):
            return False
        checksums = {"algorithm": CHECKSUM_ALGORITHM, "arrays": tree_checksums(state),
                     "data": position_digest(data_position)}
        return self._manager.save(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                       DATA_ITEM: ocp.args.JsonSave(dict(data_position)),
                                       CHECKSUM_ITEM: ocp.args.JsonSave(checksums)}),
            force=force,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, data position) of ``step`` (default latest), placed as ``abstract_state`` says.

        ``abstract_state`` is a tree of ``jax.ShapeDtypeStruct`` carrying shardings.  Raises
        ``CheckpointDamagedError`` when the step cannot be read or does not verify.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        step_dir = self.directory / str(step)
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state), DATA_ITEM: ocp.args.JsonRestore()}
        if (step_dir / CHECKSUM_ITEM).exists():
            items[CHECKSUM_ITEM] = ocp.args.JsonRestore()
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax / TensorStore raise many types; all mean "cannot be read"
            raise CheckpointDamagedError(f"{step_dir} cannot be read ({_reason(err)})") from err
        if CHECKSUM_ITEM not in items:
            raise CheckpointDamagedError(f"{step_dir} has no {CHECKSUM_ITEM} item, so what it holds cannot be "
                                         f"verified (written by an older dss_jax, or its files were removed)")
        verify_checksums(tree_checksums(restored[STATE_ITEM]), restored[CHECKSUM_ITEM], step_dir)
        if restored[CHECKSUM_ITEM].get("data") != position_digest(restored[DATA_ITEM]):
            raise CheckpointDamagedError(f"{step_dir}: the data position {dict(restored[DATA_ITEM])} differs from "
                                         f"what was saved; its bytes changed after it was written")
        return restored[STATE_ITEM], dict(restored[DATA_ITEM])

    def restore_latest(self, abstract_state: Any, say: Callable[[str], None] = print
                       ) -> tuple[Any, dict, int] | None:
        """(state, data position, step) of the newest step that restores and verifies; None if none exist.

        Newer steps that fail are reported through ``say`` with their reasons and moved to
        ``<checkpoints>_damaged/`` (not deleted).  Raises ``CheckpointRestoreError`` when
        there are steps and none restores; then nothing is moved.
        """
        found, failures = newest_that_restores(self.all_steps(), lambda step: self.restore(abstract_state, step))
        if found is None:
            if failures:
                raise CheckpointRestoreError(
                    f"no checkpoint in {self.directory} restores ({len(failures)} step(s) tried):\n"
                    + _reasons(failures)
                    + "\nMove them aside to start again from the initial checkpoint, or restore them from a copy.")
            return None
        (state, position), step = found
        if failures:
            moved = self._set_aside([s for s, _ in failures])
            say(f"checkpoint step(s) {', '.join(str(s) for s, _ in failures)} could not be used; resuming "
                f"from step {step}, the newest that restores and verifies.\n{_reasons(failures)}"
                f"\n  moved (not deleted) to {moved}")
        return state, position, step

    def _set_aside(self, steps: list[int]):
        """Move damaged steps out of orbax's directory (primary host; all hosts then re-read it)."""
        target = self.directory.parent / f"{self.directory.name}{DAMAGED_SUFFIX}"
        if jax.process_index() == 0:
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = target / str(step)
                n = 1
                while destination.exists():
                    destination, n = target / f"{step}.{n}", n + 1
                _move(self.directory / str(step), destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("dss_jax checkpoints set aside")
        self._manager.reload()
        return target

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


def _move(source, destination) -> None:
    """Rename a step directory; on object stores (no directory rename) copy every file, then remove."""
    if not storage.is_remote(source):
        os.replace(os.fspath(source), os.fspath(destination))
        return
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        out = destination / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        path.copy(out)
    source.rmtree()


def latest_checkpoint_step(directory: str | os.PathLike) -> int | None:
    """Latest complete step in a checkpoint directory, or None (no directory / no step)."""
    steps = checkpoint_steps(directory)
    return steps[-1] if steps else None


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """Every complete step in a checkpoint directory, ascending ([] when there is none)."""
    directory = storage.run_path(directory)
    if not directory.is_dir():
        return []
    manager = ocp.CheckpointManager(directory, item_names=(STATE_ITEM, DATA_ITEM, CHECKSUM_ITEM))
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: int | None = None) -> Any:
    """Only the verified ``params`` of a trainer checkpoint (optimizer state etc. are not read).

    ``directory`` is a run's checkpoint directory (``MODEL_DIR/checkpoints``) or one step
    directory inside it.  ``abstract_params`` gives shapes, dtypes and shardings.  Raises
    ``CheckpointDamagedError`` when the step cannot be read or does not verify.
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
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                step_dir / STATE_ITEM,
                args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
            )
        saved = _read_json_item(step_dir / CHECKSUM_ITEM)
    except Exception as err:  # orbax / TensorStore raise many types; all mean "cannot be read"
        raise CheckpointDamagedError(f"{step_dir} cannot be read ({_reason(err)})") from err
    if saved is None:
        raise CheckpointDamagedError(f"{step_dir} has no {CHECKSUM_ITEM} item, so what it holds cannot be verified")
    absent = [leaf for leaf in jax.tree_util.tree_leaves(restored["params"]) if isinstance(leaf, jax.ShapeDtypeStruct)]
    if absent:
        raise CheckpointDamagedError(f"{step_dir} holds no params for {len(absent)} of the model's arrays")
    verify_checksums(tree_checksums(restored["params"], prefix="params/"), saved, step_dir)
    return restored["params"]


def restore_latest_params(directory: str | os.PathLike, abstract_params: Any, step: int | None = None,
                          say: Callable[[str], None] = print) -> tuple[Any, int]:
    """(params, step): of ``step``, or of the newest step that restores and verifies (skipped ones named).

    Read-only: damaged steps are reported, never moved.  Raises ``CheckpointRestoreError``
    when none restores, ``CheckpointDamagedError`` when the requested ``step`` does not.
    """
    directory = storage.run_path(directory)
    if step is not None:
        if not (directory / str(step)).is_dir():
            raise FileNotFoundError(f"no checkpoint step {step} in {directory} (steps: {checkpoint_steps(directory)})")
        return restore_params(directory / str(step), abstract_params), step
    steps = checkpoint_steps(directory)
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {directory}")
    found, failures = newest_that_restores(steps, lambda step: restore_params(directory / str(step), abstract_params))
    if found is None:
        raise CheckpointRestoreError(f"no checkpoint in {directory} restores ({len(failures)} step(s) tried):\n"
                                     + _reasons(failures))
    params, step = found
    if failures:
        say(f"using checkpoint step {step}: newer step(s) could not be used:\n{_reasons(failures)}")
    return params, step


def newest_that_restores(steps, restore: Callable[[int], Any]):
    """``((restored, step) or None, [(step, reason), ...])``: ``restore`` tried from the newest step down,
    stopping at the first that does not raise ``CheckpointDamagedError``."""
    failures: list[tuple[int, str]] = []
    for step in sorted(steps, reverse=True):
        try:
            return (restore(step), step), failures
        except CheckpointDamagedError as err:
            failures.append((step, str(err)))
    return None, failures


def _reasons(failures) -> str:
    return "\n".join(f"  step {s}: {why}" for s, why in failures)


def _read_json_item(path) -> Any:
    """A JsonSave item of a step directory, or None when the step has none."""
    if not path.exists():
        return None
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path)


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
