"""The trainer's command line, shared by the TPU and SLURM launchers."""
from __future__ import annotations

import json

from dss_launch.config import LaunchConfig


def gin_string_literal(text: str) -> str:
    """``text`` as a gin (Python) string literal, double-quoted: ``gs://b/x`` -> ``"gs://b/x"``."""
    return json.dumps(text)


def train_argv(config: LaunchConfig, multihost_flag: bool) -> list[str]:
    """``python -m dss_jax.train --gin_file=... --gin.MODEL_DIR="..." [--gin.X=Y ...] [--multihost]``."""
    argv = [config.python, "-m", config.train_module, f"--gin_file={config.gin_file}",
            f"--gin.MODEL_DIR={gin_string_literal(config.model_dir)}"]
    argv += [f"--gin.{binding}" for binding in config.gin_bindings]
    if multihost_flag:
        argv.append("--multihost")
    return argv
