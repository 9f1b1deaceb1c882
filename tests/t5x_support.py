"""Helpers of the upstream-T5X tests: is T5X installed, a tiny T5X model, running a module, built-once folders.

T5X is installed into the test venv by `.ci/run` from ../shared/t5x (`install.sh`); without
it every test that needs it skips with `T5X_SKIP_REASON`.
"""
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

try:
    import t5x  # noqa: F401

    T5X_SKIP_REASON = None
except ImportError as e:  # pragma: no cover - depends on the venv
    T5X_SKIP_REASON = (f"upstream T5X is not installed ({e}); .ci/run installs it from ../shared/t5x "
                       f"(bash ../shared/t5x/install.sh VENV)")

requires_t5x = pytest.mark.skipif(T5X_SKIP_REASON is not None, reason=T5X_SKIP_REASON or "")

# A tiny T5 1.1 network, the same in dss_jax's and T5X's terms (asymmetric 2 + 3 layers so
# that a mix-up of encoder and decoder tensors shows).
TINY = dict(vocab_size=128, d_model=32, num_heads=4, d_kv=8, d_ff=64, num_encoder_layers=2, num_decoder_layers=3)


def tiny_dss_config(**overrides):
    """dss_jax's T5Config of the tiny T5 1.1 network (no dropout, float32)."""
    import dss_jax

    return dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0, **{**TINY, **overrides})


def tiny_t5x_model(config):
    """T5X's EncoderDecoderModel for a dss_jax config, with T5X's T5 1.1 Adafactor."""
    import jax.numpy as jnp
    import seqio
    from t5x import adafactor, models
    from t5x.examples.t5 import network

    from dss_jax import t5x_checkpoint

    fields = t5x_checkpoint.t5x_network_config(config)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    vocabulary = seqio.PassThroughVocabulary(size=config.vocab_size)
    return models.EncoderDecoderModel(
        module=network.Transformer(network.T5Config(**fields)), input_vocabulary=vocabulary,
        output_vocabulary=vocabulary,
        optimizer_def=adafactor.Adafactor(decay_rate=0.8, step_offset=0,
                                          logical_factor_rules=adafactor.standard_logical_factor_rules()))


def t5x_gin_search_path() -> str:
    """The folder that holds T5X's `t5x/configs/...` gin files (its site-packages)."""
    import t5x

    return str(pathlib.Path(t5x.__file__).resolve().parents[1])


def built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
    """`build(directory)` run once per test session, even across pytest-xdist workers.

    Under xdist each worker has its own base temp folder; their parent is shared, so the
    first worker to get the lock builds and the others reuse its result.
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            build(directory)
            done.write_text("ok")
    return directory


def run_module(module: str, args, env_overrides: dict, timeout: int = 300, cwd=None) -> subprocess.CompletedProcess:
    """`python -m module args...` in a child process, failing the test with its log tail."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", **env_overrides}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"python -m {module} failed:\n{result.stderr[-6000:]}"
    return result
