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


@gin.configurable
def train(model_dir: str = gin.REQUIRED, experiment=gin.REQUIRED, run=None,
          resume_may_change: Sequence[str] = ()) -> dict:
    """Validate the configuration, then ``train_loop.train``."""
    from dss_jax import experiment as experiment_lib
    from dss_jax import hardware, train_loop

    run = run if run is not None else experiment_lib.RunConfig()
    return train_loop.train(experiment, run, model_dir, gin_text=gin.config_str(),
                            may_change=tuple(resume_may_change), model_config=hardware.resolve(experiment.model))


def main(argv: Sequence[str] | None = None) -> int:
    from dss_jax import gin_utils, metrics_logging

    return gin_utils.run_entrypoint("python -m dss_jax.train", __doc__, argv, train,
                                    exit_codes={metrics_logging.NonFiniteLossError: 3})
