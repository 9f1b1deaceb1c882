"""Multi-host input correctness, with two real JAX processes on this machine.

Two processes join one JAX distributed system on 127.0.0.1 (``jax.distributed.initialize``,
one CPU device each).  Each reads its own shard of the data through the trainer's input
pipeline (``partitioning.host_shard_info()`` -> seqio ``ShardInfo``), and:

* together they see every training example exactly once per epoch (by ``example_id``
  at the task level, and by content through the pipeline's model features);
* each host's rows, put together with ``jax.make_array_from_process_local_data``
  (``partitioning.make_global_batch``), form a global batch whose rows are host 0's
  rows followed by host 1's.
"""
import json
import os
import socket
import subprocess
import sys

WORKER = r'''
import json, sys
port, process_id, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=120)
import numpy as np
import seqio
from jax.experimental import multihost_utils
import dss_tasks  # registers the DSS tasks (the entrypoints import the task module the same way)
from dss_jax import input_pipeline, partitioning

LENGTHS = {"inputs": 64, "targets": 32}
shard = partitioning.host_shard_info()
report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "shard": [shard.index, shard.num_shards], "local_devices": jax.local_device_count(),
          "global_devices": jax.device_count()}

# 1. One epoch of the label task's training split, this host's shard, by example_id.
task = input_pipeline.get_provider("dss_arith_label_gold")
ds = task.get_dataset(LENGTHS, split="train", shuffle=True, seed=7, shard_info=shard, num_epochs=1)
report["example_ids"] = [int(ex["example_id"]) for ex in ds.as_numpy_iterator()]

# 2. The same epoch through the trainer's pipeline (model features), by content.
def encoder_rows(shard_info):
    cfg = input_pipeline.StreamConfig(task="dss_arith_label_gold", sequence_lengths=LENGTHS, shuffle=False)
    features, _ = input_pipeline.model_feature_dataset(cfg, shard_info=shard_info, num_epochs=1)
    return [ex["encoder_input_tokens"].tolist() for ex in features.as_numpy_iterator()]
report["pipeline_rows"] = encoder_rows(shard)
if process_id == 0:
    report["unsharded_rows"] = encoder_rows(None)

# 3. A global training batch from the two hosts' local batches (mixture stream).
cfg = input_pipeline.StreamConfig(task="dss_arith_mix_gold_lambda1", rationale_tasks=("dss_arith_rationale",), sequence_lengths=LENGTHS, batch_size=8, seed=3)
batches, _ = input_pipeline.train_batches(cfg, shard_info=shard, num_hosts=jax.process_count())
local = next(batches)
mesh = partitioning.make_mesh(data=-1, model=1)
global_batch = partitioning.make_global_batch(local, partitioning.batch_shardings(mesh, list(local)))
report["local_batch"] = {k: np.asarray(v).tolist() for k, v in local.items()}
report["global_shapes"] = {k: list(v.shape) for k, v in global_batch.items()}
report["gathered"] = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)).tolist()
                      for k, v in global_batch.items()}
with open(out_path, "w") as f:
    json.dump(report, f)
jax.distributed.shutdown()
'''


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_hosts(tmp_path, timeout=420):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    port = free_port()
    outputs = [tmp_path / f"host{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(script), str(port), str(i), str(outputs[i])], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    return [json.loads(p.read_text()) for p in outputs]


def test_two_hosts_read_disjoint_shards_that_cover_each_epoch_and_assemble_one_global_batch(tmp_path):
    host0, host1 = run_two_hosts(tmp_path)

    # the distributed system: two processes, one device each, two shards
    for i, host in enumerate((host0, host1)):
        assert host["process_index"] == i and host["process_count"] == 2
        assert host["shard"] == [i, 2]
        assert (host["local_devices"], host["global_devices"]) == (1, 2)

    # every example of the epoch exactly once, by example_id
    ids0, ids1 = host0["example_ids"], host1["example_ids"]
    assert ids0 and ids1
    assert len(set(ids0)) == len(ids0) and len(set(ids1)) == len(ids1)
    assert not set(ids0) & set(ids1)
    assert sorted(ids0 + ids1) == list(range(len(ids0) + len(ids1)))

    # ... and through the pipeline's model features: the two shards add up to the unsharded epoch
    assert sorted(host0["pipeline_rows"] + host1["pipeline_rows"]) == sorted(host0["unsharded_rows"])

    # the global batch: 8 rows, host 0's 4 rows then host 1's 4 rows, on both hosts
    local0, local1 = host0["local_batch"], host1["local_batch"]
    assert set(local0) == set(local1) >= {"encoder_input_tokens", "decoder_target_tokens", "task_ids"}
    for name in local0:
        assert len(local0[name]) == len(local1[name]) == 4
        assert host0["global_shapes"][name][0] == 8
        assert host0["gathered"][name] == local0[name] + local1[name]
        assert host1["gathered"][name] == host0["gathered"][name]
    assert local0["encoder_input_tokens"] != local1["encoder_input_tokens"]
