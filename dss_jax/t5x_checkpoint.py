"""T5X checkpoints <-> dss_jax parameters.

Reading needs no T5X (only flax, orbax and tensorstore, which the project already uses),
so the trainer starts from the public checkpoints under
``gs://t5-data/pretrained_models/t5x/`` on machines without T5X. Two formats are read:

- T5X's own format (``t5x.checkpoints.Checkpointer``, that of the public
  ``t5_1_1_*/checkpoint_1000000``): ``checkpoint_N/checkpoint`` is a msgpack of the train
  state whose arrays are inline or TensorStore specs with paths relative to the step
  directory (on ``gs://`` the bucket is the checkpoint's own);
- Orbax (what ``t5x.train`` writes by default): ``checkpoint_N/state`` is an Orbax PyTree
  holding ``target`` (the parameters) and ``state`` (step, optimizer slots).

A path is a step directory (``.../checkpoint_N``) or a T5X ``MODEL_DIR`` holding them
(the latest is read). Only the parameters (``target``) are read, as float32 numpy.

T5X's example network (``t5x/examples/t5/network.py``) names its parameters as dss_jax's
unscanned model does (``encoder/layers_0/attention/query/kernel`` ...) with the same 2-D
kernel shapes, so the trees map one to one; a T5X checkpoint carries no config, so the
reader checks each shape against the model the caller expects.

``write_t5x_checkpoint`` writes parameters as a T5X checkpoint with T5X's own
``Checkpointer`` and train state (T5X's T5 1.1 Adafactor, fresh slots), which
``t5x.eval``/``t5x.infer`` restore and ``t5x.train`` fine-tunes from; it needs T5X.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np
from etils import epath

from dss_jax import storage
from dss_jax.configs import T5Config

STEP_DIR_PATTERN = re.compile(r"^checkpoint_(\d+)$")
LEGACY_FILE = "checkpoint"  # the msgpack of T5X's own format
ORBAX_STATE_ITEM = "state"
PARAMS_KEY = "target"
# What T5X's example network fixes (t5x/examples/t5/layers.py): a model that differs cannot be written.
T5X_RELATIVE_BUCKETS = 32
T5X_RELATIVE_MAX_DISTANCE = 128
T5X_LAYER_NORM_EPSILON = 1e-6


class T5XCheckpointError(ValueError):
    """The path is not a T5X checkpoint, or its parameters do not fit the model."""


# ----------------------------------------------------------------------------- finding


def step_dirs(path: str | os.PathLike) -> dict[int, epath.Path]:
    """``{step: path}`` of the ``checkpoint_N`` directories in a T5X ``MODEL_DIR``."""
    directory = storage.run_path(path)
    if not directory.is_dir():
        return {}
    found = {}
    for child in directory.iterdir():
        match = STEP_DIR_PATTERN.match(child.name)
        if match and _is_step_dir(child):
            found[int(match.group(1))] = child
    return found


def _is_step_dir(path: epath.Path) -> bool:
    return (path / LEGACY_FILE).is_file() or (path / ORBAX_STATE_ITEM).is_dir()


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
    """True for a ``checkpoint_N`` step directory or a directory holding some."""
    directory = storage.run_path(path)
    if STEP_DIR_PATTERN.match(directory.name) and _is_step_dir(directory):
        return True
    return bool(step_dirs(directory))


def find_step_dir(path: str | os.PathLike, step: int | None = None) -> epath.Path:
    """The step directory ``path`` names, or the latest (or ``step``'s) one inside it."""
    directory = storage.run_path(path)
    if STEP_DIR_PATTERN.match(directory.name) and _is_step_dir(directory):
        return directory
    found = step_dirs(directory)
    if not found:
        raise T5XCheckpointError(f"{path}: no T5X checkpoint (neither a checkpoint_N directory with a "
                                 f"'{LEGACY_FILE}' file or '{ORBAX_STATE_ITEM}/' folder, nor a folder holding one)")
    if step is None:
        return found[max(found)]
    if step not in found:
        raise T5XCheckpointError(f"{path}: no checkpoint_{step}; steps present: {sorted(found)}")
    return found[step]


# ----------------------------------------------------------------------------- reading


def read_t5x_params(path: str | os.PathLike, step: int | None = None) -> dict:
    """The parameters (``target``) of a T5X checkpoint as a nested dict of float32 numpy."""
    step_dir = find_step_dir(path, step)
    if (step_dir / LEGACY_FILE).is_file():
        params = _read_legacy_target(step_dir)
    else:
        params = _read_orbax_target(step_dir / ORBAX_STATE_ITEM)
    return _to_float32_numpy(params)


def _read_legacy_target(step_dir: epath.Path) -> dict:
    from flax import serialization

    contents = serialization.msgpack_restore((step_dir / LEGACY_FILE).read_bytes())
    # Version >= 1 nests the train state under "optimizer"; version 0 is the state itself.
    state = contents.get("optimizer", contents) if isinstance(contents, Mapping) else None
    if not isinstance(state, Mapping) or PARAMS_KEY not in state:
        raise T5XCheckpointError(f"{step_dir / LEGACY_FILE}: no '{PARAMS_KEY}' (parameters) in this T5X checkpoint")
    return _map_arrays(state[PARAMS_KEY], lambda leaf: _read_legacy_array(step_dir, leaf))


def _is_tensorstore_spec(leaf: Any) -> bool:
    return isinstance(leaf, Mapping) and {"driver", "kvstore"} <= set(leaf)


def _map_arrays(tree: Any, fn) -> Any:
    if _is_tensorstore_spec(tree) or not isinstance(tree, Mapping):
        return fn(tree)
    return {key: _map_arrays(value, fn) for key, value in tree.items()}


def _read_legacy_array(step_dir: epath.Path, leaf: Any) -> np.ndarray:
    if not _is_tensorstore_spec(leaf):
        return np.asarray(leaf)  # small arrays are stored inline in the msgpack
    import tensorstore as ts

    return ts.open(tensorstore_spec(step_dir, leaf)).result().read().result()


def tensorstore_spec(step_dir: str | os.PathLike, spec: Mapping[str, Any]) -> dict:
    """A stored array's TensorStore spec with its path made absolute under ``step_dir``.

    T5X writes paths relative to the step directory; on ``gs://`` the kvstore is the
    bucket of ``step_dir`` itself (T5X writes a placeholder bucket), locally a file store.
    """
    spec = {**spec, "kvstore": dict(spec["kvstore"])}
    relative = spec["kvstore"].get("path", spec.get("path"))
    if relative is None:
        raise T5XCheckpointError(f"TensorStore spec without a path in {step_dir}: {spec}")
    spec.pop("path", None)
    location = os.fspath(step_dir)
    match = re.fullmatch(r"gs://([^/]+)/?(.*)", location)
    if match:
        spec["kvstore"] = {"driver": "gcs", "bucket": match.group(1),
                           "path": _join(match.group(2), relative)}
    elif storage.is_remote(location):
        raise T5XCheckpointError(f"{location}: reading T5X checkpoints is supported locally and on gs:// only")
    else:
        spec["kvstore"] = {"driver": "file", "path": _join(location, relative)}
    return spec


def _join(directory: str, relative: str) -> str:
    return relative if not directory else f"{directory.rstrip('/')}/{relative}"


def _read_orbax_target(state_dir: epath.Path) -> dict:
    import jax
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.metadata(state_dir).item_metadata.tree
        if PARAMS_KEY not in tree:
            raise T5XCheckpointError(f"{state_dir}: no '{PARAMS_KEY}' (parameters) in this T5X checkpoint")
        item = {PARAMS_KEY: tree[PARAMS_KEY]}
        restore_args = {PARAMS_KEY: jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                                           tree[PARAMS_KEY])}
        restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    return restored[PARAMS_KEY]


def _to_float32_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _to_float32_numpy(value) for key, value in tree.items()}
    return np.asarray(tree, dtype=np.float32)


# ----------------------------------------------------------------------------- fitting


def check_params_fit(params: Mapping[str, Any], abstract_params: Mapping[str, Any], source: str) -> None:
    """Raises one error listing every parameter missing, unexpected or of another shape.

    ``abstract_params`` is the model's unscanned tree (shapes of ``jax.ShapeDtypeStruct``).
    """
    got, want = _flat_shapes(params), _flat_shapes(abstract_params)
    problems = [f"missing {name} {shape}" for name, shape in want.items() if name not in got]
    problems += [f"unexpected {name} {shape}" for name, shape in got.items() if name not in want]
    problems += [f"{name} has shape {got[name]}, the model's is {shape}" for name, shape in want.items()
                 if name in got and got[name] != shape]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... ({len(problems)} in all)" if len(problems) > 12 else "")
        raise T5XCheckpointError(f"the T5X checkpoint {source} does not fit the model config: {shown}. "
                                 f"Set the model config to the checkpoint's size (e.g. t5_1_1_small for "
                                 f"t5_1_1_small/checkpoint_1000000)")


def _flat_shapes(tree: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flat_shapes(value, name))
        else:
            out[name] = tuple(int(d) for d in value.shape)
    return out


# ----------------------------------------------------------------------------- writing


def t5x_network_config(config: T5Config) -> dict:
    """Keyword arguments of T5X's ``network.T5Config`` for the same network as ``config``.

    T5X's example network ties the output layer exactly when it also scales the decoder
    output (``logits_via_embedding``) and fixes the relative-position buckets and the
    layer-norm epsilon; configs it cannot express raise ``T5XCheckpointError``.
    """
    unsupported = []
    if config.tie_word_embeddings != config.scale_decoder_outputs:
        unsupported.append(f"tie_word_embeddings={config.tie_word_embeddings} with "
                           f"scale_decoder_outputs={config.scale_decoder_outputs}")
    if (config.relative_attention_num_buckets, config.relative_attention_max_distance) != (
            T5X_RELATIVE_BUCKETS, T5X_RELATIVE_MAX_DISTANCE):
        unsupported.append(f"relative attention buckets/max distance {config.relative_attention_num_buckets}/"
                           f"{config.relative_attention_max_distance} (T5X: 32/128)")
    if config.layer_norm_epsilon != T5X_LAYER_NORM_EPSILON:
        unsupported.append(f"layer_norm_epsilon={config.layer_norm_epsilon} (T5X: 1e-6)")
    if unsupported:
        raise T5XCheckpointError("T5X's T5 network cannot express this model: " + "; ".join(unsupported))
    return dict(
        vocab_size=config.vocab_size, emb_dim=config.d_model, num_heads=config.num_heads,
        num_encoder_layers=config.num_encoder_layers, num_decoder_layers=config.num_decoder_layers,
        head_dim=config.d_kv, mlp_dim=config.d_ff,
        mlp_activations=("gelu", "linear") if config.is_gated else ("relu",),
        dropout_rate=config.dropout_rate, logits_via_embedding=config.tie_word_embeddings,
        dtype=config.dtype)


def unscanned_float32(params: Mapping[str, Any], config: T5Config) -> dict:
    """``params`` in the ``layers_{i}`` layout as float32 numpy (T5X's layout)."""
    from dss_jax.model import unstack_layers

    params = dict(params)
    if "layers" in params["encoder"]:
        params = unstack_layers(params, config)
    return _to_float32_numpy(params)


def write_t5x_checkpoint(config: T5Config, params: Mapping[str, Any], directory: str | os.PathLike,
                         step: int = 0) -> epath.Path:
    """Writes ``params`` as ``directory/checkpoint_{step}`` with T5X's own Checkpointer.

    The train state is T5X's for its T5 1.1 gin files (Adafactor, decay 0.8, factored
    second moments, fresh slots), so ``t5x.train`` can continue from it too. Needs T5X.
    """
    try:
        import jax
        import jax.numpy as jnp
        from t5x import adafactor, checkpoints, models, partitioning
        from t5x import train_state as train_state_lib
        from t5x.examples.t5 import network
    except ImportError as e:
        raise ImportError(f"writing a T5X checkpoint needs T5X installed ({e}); install it with "
                          f'pip install "t5x @ git+https://github.com/google-research/t5x"') from e
    import seqio

    network_fields = t5x_network_config(config)
    network_fields["dtype"] = jnp.dtype(network_fields["dtype"])
    vocabulary = seqio.PassThroughVocabulary(size=config.vocab_size)
    optimizer = adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                                    logical_factor_rules=adafactor.standard_logical_factor_rules())
    model = models.EncoderDecoderModel(module=network.Transformer(network.T5Config(**network_fields)),
                                       input_vocabulary=vocabulary, output_vocabulary=vocabulary,
                                       optimizer_def=optimizer)
    shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
    abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
    ours = unscanned_float32(params, config)
    check_params_fit(ours, abstract["params"], "being written")
    variables = {"params": jax.tree_util.tree_map(jnp.asarray, ours), "params_axes": abstract["params_axes"]}
    state = train_state_lib.FlaxOptimTrainState.create(model.optimizer_def, variables).replace_step(
        jnp.asarray(step, jnp.int32))
    out = storage.run_path(directory)
    out.mkdir(parents=True, exist_ok=True)
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    checkpoints.Checkpointer(state, partitioner, os.fspath(out)).save(state)
    return out / f"checkpoint_{step}"
