"""``python -m dss_jax.export``: a dss_jax run's checkpoint as a T5X checkpoint.

    python -m dss_jax.export --model_dir=/tmp/run --output=/tmp/run_t5x [--step=1000]

Reads the model from ``MODEL_DIR/experiment.json`` and the parameters of the latest (or
the given) checkpoint, and writes ``OUTPUT/checkpoint_{step}`` with T5X's own
checkpointer (``dss_jax.t5x_checkpoint.write_t5x_checkpoint``; needs T5X installed).
``t5x.eval``/``t5x.infer`` restore it with ``gin/t5x/dss_{benchmark}_{size}_{eval,infer}.gin``
(``--gin.CHECKPOINT_PATH``); the printed ``network.T5Config`` bindings give T5X the
run's network when it is not one of the T5 1.1 sizes. Both paths may be ``gs://`` URLs.
"""
from __future__ import annotations

import argparse
import json
import shlex
from typing import Sequence


def export_run(model_dir: str, output: str, step: int | None = None) -> tuple[str, dict]:
    """Writes the run's checkpoint as T5X's; returns (step directory, T5X network fields)."""
    import os

    from dss_jax import checkpoints, run_dir, t5x_checkpoint
    from dss_jax.model import abstract_params

    directory = run_dir.RunDir(model_dir)
    config = directory.read_experiment().model
    step = checkpoints.latest_checkpoint_step(directory.checkpoints) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {directory.checkpoints}: nothing to export")
    params = checkpoints.restore_params(directory.checkpoints / str(step), abstract_params(config))
    written = t5x_checkpoint.write_t5x_checkpoint(config, params, output, step=step)
    return os.fspath(written), t5x_checkpoint.t5x_network_config(config)


def gin_bindings(network_fields: dict) -> list[str]:
    """``--gin.network.T5Config.*`` flags that give T5X this network (shell-quoted)."""
    return [_shell_word(f"--gin.network.T5Config.{name}={value!r}") for name, value in network_fields.items()
            if name != "dropout_rate"]


def _shell_word(flag: str) -> str:
    """``flag`` as one shell word, in the ``--gin.X="'value'"`` style of T5X's documentation."""
    if any(c in flag for c in '"$`\\'):
        return shlex.quote(flag)
    return f'"{flag}"' if any(c in flag for c in " '()[]{}*?") else flag


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dss_jax.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model_dir", required=True, help="the dss_jax run directory (MODEL_DIR)")
    parser.add_argument("--output", required=True, help="folder to write checkpoint_{step} into")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the latest)")
    args = parser.parse_args(argv)
    written, network = export_run(args.model_dir, args.output, args.step)
    print(json.dumps({"t5x_checkpoint": written, "network": network}))
    print("T5X: " + " ".join([_shell_word(f"--gin.CHECKPOINT_PATH='{written}'"), *gin_bindings(network)]))
    return 0
