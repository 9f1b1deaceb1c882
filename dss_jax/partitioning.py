"""Device mesh, logical-axis rules and shardings for the T5X-style trainer.

The model names every parameter axis with a logical name (``vocab, embed, mlp, heads,
kv, joined_kv, relpos_buckets, layers``) and constrains activations with
(``batch, length, embed, mlp, heads, kv, vocab``).  This module maps those names onto a
2-D ``jax.sharding.Mesh`` with axes ``data`` and ``model``:

* ``batch`` -> ``data`` (data parallelism);
* ``vocab, mlp, heads, joined_kv`` -> ``model`` (Megatron-style tensor parallelism);
* with FSDP, ``embed`` -> ``data`` as well, so parameters (and the optimizer state that
  mirrors them) are also split over the data axis.  Flax resolves rules in order and
  never reuses a mesh axis inside one array, so an activation ``[batch, length, embed]``
  keeps ``batch`` on ``data`` and leaves ``embed`` replicated.

It also covers the multi-host plumbing: ``jax.distributed.initialize()`` when asked, the
per-host SeqIO ``ShardInfo`` and assembling a global batch from per-host pieces.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

LogicalRules = Sequence[tuple[str, Any]]


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``data`` x ``model`` mesh over all (or the given) devices, with Auto axis types.

    ``-1`` for one axis means "all remaining devices".  Auto axis types keep GSPMD-style
    propagation (jax 0.10's ``make_mesh`` default is Explicit, see PITFALLS.md).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and model == -1:
        raise ValueError("at most one of data/model may be -1")
    if data == -1:
        if n % model:
            raise ValueError(f"{n} devices cannot be split into model={model} groups")
        data = n // model
    if model == -1:
        if n % data:
            raise ValueError(f"{n} devices cannot be split into data={data} groups")
        model = n // data
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, have {n}")
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def logical_axis_rules(fsdp: bool = False) -> tuple[tuple[str, Any], ...]:
    """Logical axis name -> mesh axis.  Order matters: earlier rules win a mesh axis."""
    rules: list[tuple[str, Any]] = [
        ("batch", DATA_AXIS),
        ("vocab", MODEL_AXIS),
        ("mlp", MODEL_AXIS),
        ("heads", MODEL_AXIS),
        ("joined_kv", MODEL_AXIS),
        ("kv", None),
        ("length", None),
        ("relpos_buckets", None),
        ("layers", None),
    ]
    if fsdp:
        rules.append(("embed", DATA_AXIS))
    rules.append(("embed", None))
    return tuple(rules)


def _dummy_model_inputs() -> tuple[jnp.ndarray, jnp.ndarray]:
    tokens = jnp.ones((1, 1), jnp.int32)
    return tokens, tokens


def param_logical_specs(model: nn.Module) -> Any:
    """Logical PartitionSpecs of the model's parameters (no allocation: ``jax.eval_shape``).

    T5 parameter shapes do not depend on the sequence length, so a 1x1 input suffices.
    """
    encoder_tokens, decoder_tokens = _dummy_model_inputs()
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), encoder_tokens, decoder_tokens, enable_dropout=False)
    )
    return nn.get_partition_spec(abstract["params"])


def param_shardings(model: nn.Module, mesh: Mesh, rules: LogicalRules) -> Any:
    """NamedShardings of the parameters under ``rules``."""
    return nn.logical_to_mesh_sharding(param_logical_specs(model), mesh, rules)


def _path_key(path: Sequence[Any]) -> tuple[str, ...]:
    out = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                out.append(str(getattr(entry, attr)))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def mirror_param_shardings(tree: Any, params_abstract: Any, params_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a tree (e.g. optax state) whose param-shaped leaves mirror the params.

    A leaf whose key path ends with a parameter's key path and has that parameter's shape
    gets that parameter's sharding.  Every other leaf (step counters, Adafactor's
    factored row/column statistics, which are O(rows + cols) small) is replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], Any]] = {}
    shard_leaves = jax.tree_util.tree_leaves(params_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    param_leaves = jax.tree_util.tree_leaves_with_path(params_abstract)
    if len(shard_leaves) != len(param_leaves):
        raise ValueError("params and their shardings have different structures")
    for (path, leaf), sharding in zip(param_leaves, shard_leaves):
        by_path[_path_key(path)] = (tuple(leaf.shape), sharding)
    longest = max((len(k) for k in by_path), default=0)

    def sharding_for(path, leaf):
        key = _path_key(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for start in range(max(0, len(key) - longest), len(key)):
            hit = by_path.get(key[start:])
            if hit is not None and hit[0] == shape:
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(sharding_for, tree)


def state_shardings(abstract_state: Any, model: nn.Module, mesh: Mesh, rules: LogicalRules) -> Any:
    """Shardings for a whole ``TrainState``: params by the rules, optimizer state mirrors them.

    ``abstract_state`` is ``jax.eval_shape(trainer.init_train_state, ...)``.  The step
    counter and the RNG key are replicated.
    """
    p_shardings = param_shardings(model, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    return abstract_state.replace(
        step=replicated,
        params=p_shardings,
        opt_state=mirror_param_shardings(abstract_state.opt_state, abstract_state.params, p_shardings, mesh),
        rng=replicated,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over ``data``; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def batch_shardings(mesh: Mesh, feature_names: Sequence[str]) -> dict[str, NamedSharding]:
    """One batch sharding per feature of a batch dict."""
    return {name: batch_sharding(mesh) for name in feature_names}


def with_sharding(abstract_tree: Any, shardings: Any) -> Any:
    """``ShapeDtypeStruct``s carrying shardings (targets for restore / jit lowering)."""
    return jax.tree_util.tree_map(
        lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract_tree, shardings
    )


# ----------------------------------------------------------------------------- multi-host

_DISTRIBUTED_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def distributed_requested(flag: bool | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to call ``jax.distributed.initialize()``.

    True when the flag says so, when ``DSS_DISTRIBUTED=1``, or when a JAX coordinator
    address is in the environment (SLURM / launcher scripts set it).  On Cloud TPU pods
    the launcher passes ``--multihost``.
    """
    environ = os.environ if environ is None else environ
    if flag is not None:
        return bool(flag)
    if environ.get("DSS_DISTRIBUTED", "").strip() in ("1", "true", "True"):
        return True
    return any(environ.get(name) for name in _DISTRIBUTED_ENV_VARS)


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
    """Initialize multi-host JAX when requested; returns whether it did."""
    if not distributed_requested(flag):
        return False
    jax.distributed.initialize()
    return True


def host_shard_info():
    """This host's slice of the input data: ``seqio.ShardInfo(process_index, process_count)``."""
    import seqio

    return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def local_batch_size(global_batch_size: int) -> int:
    """Rows of the global batch that this host reads."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {count} hosts")
    return global_batch_size // count


def make_global_batch(local_batch: Mapping[str, np.ndarray], shardings: Mapping[str, NamedSharding]) -> dict[str, jax.Array]:
    """Assemble the global, sharded batch from this host's rows."""
    missing = set(local_batch) - set(shardings)
    if missing:
        raise KeyError(f"no sharding for batch features {sorted(missing)}")
    return {
        name: jax.make_array_from_process_local_data(shardings[name], np.asarray(value))
        for name, value in local_batch.items()
    }
