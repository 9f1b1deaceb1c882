"""The trainer's command line, shared by the TPU and SLURM launchers."""
from __future__ import annotations

import json

from dss_launch.config import LaunchConfig


def gin_string_literal(text: str) -> str:
    """``text`` as a gin (Python) string literal, double-quoted: ``gs://b/x`` -> ``"gs://b/x"``."""
    return json.dumps(text)


MULTIHOST_BINDING = "--gin.MeshConfig.multihost=True"


def train_argv(config: LaunchConfig) -> list[str]:
    """``python -m dss_jax.train --gin_file=... --gin.MODEL_DIR="..." [--gin.X=Y ...] --gin.MeshConfig.multihost=True``.

    ``MeshConfig.multihost=True`` makes the trainer call ``jax.distributed.initialize()``
    (no arguments: on TPU VMs the metadata server, under SLURM the environment the
    generated script exports, supply coordinator, process count and id).
    """
    argv = [config.python, "-m", config.train_module, f"--gin_file={config.gin_file}",
            f"--gin.MODEL_DIR={gin_string_literal(config.model_dir)}"]
    argv += [f"--gin.{binding}" for binding in config.gin_bindings]
    return argv + [MULTIHOST_BINDING]
