"""dss_launch: start dss_jax training on many hosts.

* ``python -m dss_launch.tpu`` creates (or reuses) a Cloud TPU VM slice or queued
  resource, installs dss_jax on every worker, starts ``python -m dss_jax.train`` on all
  workers at once, shows the logs and tears the slice down;
* ``python -m dss_launch.slurm`` writes (and optionally submits) an ``sbatch`` script for
  multi-node GPU training;
* ``dss_launch.t5x_gin`` writes the experiment files for upstream T5X in ``gin/t5x/``.

One small YAML file (see ``example.yaml``) drives both launchers; ``--dry_run`` prints
every command and runs none.
"""
