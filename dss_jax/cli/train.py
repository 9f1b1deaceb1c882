"""``python -m dss_jax.train``: the T5X-style training entrypoint of distilling step-by-step.

    python -m dss_jax.train --gin_file=dss_arith_tiny.gin --gin.MODEL_DIR="'/tmp/run'"

gin builds one ``Experiment`` (what is trained) and one ``RunConfig`` (how the run
proceeds), see ``gin/runs/finetune.gin`` and ``dss_jax/experiment.py`` for every setting
and its default.  Baselines and variations are single bindings, e.g.
``--gin.Experiment.method="'standard_finetune'"``, ``--gin.Experiment.labels="'teacher'"``,
``--gin.Experiment.lam=2.0``, ``--gin.Experiment.fraction=0.25``,
``--gin.Experiment.loss_mode="'mixture'"``, ``--gin.TrainConfig.steps=2000``.

A restart in the same MODEL_DIR resumes (state and data position); it is refused, with
every differing setting listed, when the experiment differs from the recorded one, unless
``--gin.train.resume_may_change="['optimizer.total_steps']"`` allows it.
Exit codes: 0 done (or stopped cleanly by SIGTERM), 2 bad configuration, 3 NaN/Inf loss.
"""
from __future__ import annotations

import sys
from typing import Sequence

import gin


def train() -> dict:
    """The gin-built run (``gin_utils.train_settings``, the ``train`` configurable), then ``train_loop.train``.

    The model config is resolved for the hardware inside the loop, after the multi-host
    runtime has started (``jax.distributed.initialize`` must come before any JAX call).
    """
    from dss_jax import gin_utils, train_loop

    settings = gin_utils.train_settings()
    return train_loop.train(settings.experiment, settings.run, settings.model_dir, gin_text=gin.config_str(),
                            may_change=settings.resume_may_change)


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils, metrics_logging

    return gin_utils.run_entrypoint("python -m dss_jax.train", __doc__, argv, train,
                                    exit_codes={metrics_logging.NonFiniteLossError: 3})
