"""Where step 0's parameters come from: one entry, ``load_initial_params(source, ...)``.

``source`` is one of

- ``"random"``: an explicit random initialisation (returns None; the trainer draws them);
- a local Hugging Face ``save_pretrained`` directory (``config.json`` + weights);
- a T5X checkpoint: a ``checkpoint_N`` directory or a T5X ``MODEL_DIR`` holding them,
  local or ``gs://`` (the public ``gs://t5-data/pretrained_models/t5x/t5_1_1_*/checkpoint_1000000``);
- another dss_jax run directory (its latest checkpoint), its ``checkpoints/`` folder or one
  step folder inside it;
- a Hugging Face model id such as ``google/t5-v1_1-small``, fetched with
  ``huggingface_hub.snapshot_download`` into the hub cache (``HF_HOME`` / ``HF_HUB_CACHE``;
  with ``HF_HUB_OFFLINE=1`` only the cache is read). One weight format is fetched, the
  first the model has of safetensors, Flax msgpack (what ``google/t5-v1_1-*`` publish
  besides PyTorch) and, only when torch is installed, ``pytorch_model.bin``.

The loaded parameters are checked against the model config (shapes, and for Hugging Face
checkpoints the architecture their config.json describes), laid out as the model wants
(scanned or not) and placed as ``abstract_params`` says (dtype and sharding). A source
that cannot be reached raises ``InitialCheckpointError`` naming it and the two ways out.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any

from dss_jax import storage
from dss_jax.configs import T5Config
from dss_jax.experiment import RANDOM_INIT  # the one spelling of an explicit random start

logger = logging.getLogger(__name__)

HF_WEIGHT_PATTERNS = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors")
HF_FLAX_PATTERNS = ("flax_model.msgpack", "flax_model.msgpack.index.json", "flax_model-*.msgpack")
HF_PYTORCH_PATTERNS = ("pytorch_model.bin",)
HF_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Fields a Hugging Face config.json determines; the model config must agree on each.
ARCHITECTURE_FIELDS = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
                       "num_decoder_layers", "mlp_activation", "tie_word_embeddings", "scale_decoder_outputs",
                       "relative_attention_num_buckets", "relative_attention_max_distance")


class InitialCheckpointError(ValueError):
    """The initial checkpoint cannot be reached, recognised, or does not fit the model."""


def load_initial_params(source: str, abstract_params: Any, model_config: T5Config) -> Any:
    """Step 0's parameters from ``source``, placed like ``abstract_params``; None for ``"random"``.

    ``abstract_params`` is the model's parameter tree of ``jax.ShapeDtypeStruct`` (with
    shardings when placing on a mesh); ``model_config`` the model's ``T5Config``.
    """
    if not isinstance(source, str) or not source.strip():
        raise InitialCheckpointError(f"initial checkpoint {source!r} is not set; {_ways_out()}")
    if source == RANDOM_INIT:
        logger.info("initial parameters: random initialisation (explicitly requested)")
        return None
    kind, location = resolve_source(source)
    logger.info("initial parameters: %s checkpoint %s", kind, location)
    return _read(kind, location, source, abstract_params, model_config)


def resolve_source(source: str) -> tuple[str, str]:
    """``(kind, location)``: kind is ``hf``, ``t5x`` or ``dss``; location a local path or URL."""
    from dss_jax import t5x_checkpoint

    path = storage.run_path(source)
    try:
        exists = path.exists()
    except Exception as e:  # noqa: BLE001 -- a bucket that cannot be reached raises its own error types
        raise InitialCheckpointError(f"initial checkpoint {source!r} cannot be reached ({type(e).__name__}: "
                                     f"{e}); {_ways_out()}") from e
    if exists:
        if (path / "config.json").is_file():
            if storage.is_remote(source):
                raise InitialCheckpointError(
                    f"initial checkpoint {source!r} is a Hugging Face directory on cloud storage, which is read "
                    f"only from local disk: copy it (gsutil -m cp -r) or use its hub id; {_ways_out()}")
            return "hf", os.fspath(path)
        if t5x_checkpoint.is_t5x_checkpoint(path):
            return "t5x", os.fspath(path)
        if _is_dss_run(path):
            return "dss", os.fspath(path)
        raise InitialCheckpointError(
            f"initial checkpoint {source!r} exists but is neither a Hugging Face save_pretrained directory "
            f"(config.json), a T5X checkpoint (checkpoint_N) nor a dss_jax run (experiment.json / checkpoints/); "
            f"{_ways_out()}")
    if not storage.is_remote(source) and HF_REPO_ID.match(source) and not source.startswith((".", "~")):
        return "hf", _download_hf(source)
    raise InitialCheckpointError(f"initial checkpoint {source!r} does not exist; {_ways_out()}")


def _ways_out() -> str:
    return ("either pass a local directory that holds the checkpoint (a Hugging Face save_pretrained folder, a "
            "T5X checkpoint_N folder or a dss_jax run), or start from random weights explicitly with "
            f"INITIAL_CHECKPOINT='{RANDOM_INIT}'")


def _is_dss_run(path) -> bool:
    """A run directory, its ``checkpoints/`` folder, or one step folder (``state/`` + ``data/``)."""
    from dss_jax import checkpoints

    def is_step(p) -> bool:
        return (p / checkpoints.STATE_ITEM).is_dir() and (p / checkpoints.DATA_ITEM).is_dir()

    if not path.is_dir():
        return False
    if any((path / name).exists() for name in ("experiment.json", "model_config.json", "checkpoints")):
        return True
    return is_step(path) or any(child.name.isdigit() and is_step(child) for child in path.iterdir())


def _download_hf(repo_id: str) -> str:
    """A Hugging Face model id's snapshot directory in the hub cache, holding config.json and
    the first weight format the model has: safetensors, Flax msgpack, then (needs torch)
    pytorch_model.bin. Each try fetches only its own files."""
    try:
        import huggingface_hub
    except ImportError as e:
        raise InitialCheckpointError(f"initial checkpoint {repo_id!r} looks like a Hugging Face model id, but "
                                     f"huggingface_hub is not installed (pip install huggingface_hub); "
                                     f"{_ways_out()}") from e
    try:
        directory = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(HF_WEIGHT_PATTERNS))
        if not _has_weights(directory):
            directory = huggingface_hub.snapshot_download(repo_id,
                                                          allow_patterns=list(HF_WEIGHT_PATTERNS + HF_FLAX_PATTERNS))
        if not _has_weights(directory):
            if not _torch_available():
                raise InitialCheckpointError(
                    f"initial checkpoint {repo_id!r}: the Hugging Face model has no safetensors weights and no "
                    f"Flax weights (flax_model.msgpack), and reading its pytorch_model.bin needs torch "
                    f"(pip install torch); {_ways_out()}")
            directory = huggingface_hub.snapshot_download(
                repo_id, allow_patterns=list(HF_WEIGHT_PATTERNS + HF_PYTORCH_PATTERNS))
    except InitialCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- hub, HTTP-client and file errors alike: one message with the way out
        offline = " (HF_HUB_OFFLINE is set: only the local hub cache was searched)" if _hub_offline() else ""
        raise InitialCheckpointError(f"initial checkpoint {repo_id!r}: the Hugging Face model could not be "
                                     f"fetched{offline}: {type(e).__name__}: {e}; {_ways_out()}") from e
    if not _has_weights(directory):
        raise InitialCheckpointError(f"initial checkpoint {repo_id!r}: the Hugging Face snapshot {directory} holds "
                                     f"no config.json with model.safetensors, flax_model.msgpack or pytorch_model.bin; "
                                     f"{_ways_out()}")
    return directory


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _has_weights(directory: str) -> bool:
    from dss_jax import hf_checkpoint

    names = set(os.listdir(directory))
    return "config.json" in names and bool(names & set(hf_checkpoint.WEIGHT_NAMES))


def _read(kind: str, location: str, source: str, abstract_params: Any, model_config: T5Config) -> Any:
    if kind == "dss":
        return _read_dss_run(location, abstract_params)
    if kind == "hf":
        params = _read_hf(location, source, model_config)
    else:
        from dss_jax import t5x_checkpoint

        try:
            params = t5x_checkpoint.read_t5x_params(location)
            t5x_checkpoint.check_params_fit(params, _unscanned_abstract(model_config), source)
        except t5x_checkpoint.T5XCheckpointError as e:
            raise InitialCheckpointError(str(e)) from e
    if model_config.scan_layers:
        from dss_jax.model import stack_layers

        params = stack_layers(params, model_config)
    return place_like(params, abstract_params, source)


def _read_hf(location: str, source: str, model_config: T5Config) -> dict:
    from dss_jax import hf_checkpoint

    hf_config, params = hf_checkpoint.load_hf_checkpoint(location)
    differing = [f"{name}: checkpoint {getattr(hf_config, name)!r}, model {getattr(model_config, name)!r}"
                 for name in ARCHITECTURE_FIELDS if getattr(hf_config, name) != getattr(model_config, name)]
    if differing:
        raise InitialCheckpointError(f"the Hugging Face checkpoint {source} ({location}) is another architecture "
                                     f"than the model config: {'; '.join(differing)}")
    return params


def _unscanned_abstract(model_config: T5Config) -> Any:
    from dss_jax.model import abstract_params

    return abstract_params(model_config.replace(scan_layers=False))


def _read_dss_run(location: str, abstract_params: Any) -> Any:
    from dss_jax import checkpoints

    path = storage.run_path(location)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    return checkpoints.restore_params(directory, abstract_params)


def place_like(params: Any, abstract_params: Any, source: str) -> Any:
    """``params`` cast to ``abstract_params``' dtypes and put on its shardings (same tree and shapes)."""
    import jax

    expected = jax.tree_util.tree_structure(abstract_params)
    got = jax.tree_util.tree_structure(params)
    if expected != got:
        raise InitialCheckpointError(f"parameters in {source} do not match the model's structure:\n{got}\nvs\n"
                                     f"{expected}")

    def place(value, target):
        if tuple(value.shape) != tuple(target.shape):
            raise InitialCheckpointError(f"parameter shape {tuple(value.shape)} in {source} != model's "
                                         f"{tuple(target.shape)}")
        sharding = getattr(target, "sharding", None)
        value = value.astype(target.dtype)
        return jax.device_put(value, sharding) if sharding is not None else jax.device_put(value)

    return jax.tree_util.tree_map(place, params, abstract_params)
