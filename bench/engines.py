"""The two engines on the same work: upstream T5X (`t5x.train`) and `python -m dss_jax.train`.

    python bench/engines.py                   # T5 1.1 small, 20 steps each (about 10 min on 2 cores)
    python bench/engines.py --tiny --steps 4  # a tiny network: a smoke run of the script

The work is the CPU protocol's (../shared/bench/PROTOCOL.md) as far as each entrypoint's
own settings express it: the cqa distilling step-by-step tasks, T5 1.1 small (vocabulary
32128, untied, float32, dropout 0, random init), inputs and targets truncated at 128, 16
sequences a step (8 `predict:` + 8 `explain:`), every sequence padded to 128 (no packing
in either engine), the spm8k tokenizer in T5 1.1's arrangement (the pieces plus 100
sentinels, no extra ids; both engines read the same local copy). Each engine keeps its own
optimizer: T5X's T5 1.1 recipe (Adafactor, constant 1e-3, z-loss 1e-4, per-sequence loss
of the rate-1:1 mixture), dss_jax's the paper's (AdamW 5e-5 linear, paired batches,
0.5 label + 0.5 rationale token-mean). So the losses are each engine's own objective on
its own batches, not the same number; the speeds are of the same tensor shapes.

Each engine runs as a user runs it, in its own process, one after the other; a step's time
is the engine's own report over the second half of the run (T5X: `timing/steps_per_second`
of its second summary period; dss_jax: `steps_per_sec` of its second log line), so the
first half absorbs compilation. Also recorded per engine: the whole process's wall and
CPU time and the load average before and after it (on a shared machine a low CPU share
means the timing was contended). Prints a table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = pathlib.Path(os.environ.get("DSS_SHARED_DIR", ROOT.parent / "shared"))
LENGTH = 128
SEQUENCES_PER_STEP = 16
TINY_T5X = dict(emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, num_encoder_layers=1, num_decoder_layers=1)
TINY_DSS = dict(d_model=64, num_heads=2, d_kv=32, d_ff=128, num_encoder_layers=1, num_decoder_layers=1)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--steps", type=int, default=20, help="training steps per engine (even, >= 4)")
    p.add_argument("--tiny", action="store_true", help="a tiny network instead of T5 1.1 small (smoke run)")
    p.add_argument("--data_dir", type=pathlib.Path, default=SHARED / "dss_datasets")
    p.add_argument("--spm", type=pathlib.Path, default=SHARED / "bench" / "spm8k.model")
    p.add_argument("--work_dir", type=pathlib.Path, default=None, help="default: a temporary folder")
    p.add_argument("--engines", nargs="+", default=["t5x", "dss_jax"], choices=["t5x", "dss_jax"])
    args = p.parse_args(argv)
    if args.steps < 4 or args.steps % 2:
        p.error("--steps must be even and >= 4 (the second half is timed)")
    return args


def t5_1_1_vocabulary(spm: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """`spm` plus `<extra_id_99>`..`<extra_id_0>`: the arrangement of T5 1.1's cc_all.32000.100extra."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(spm.read_bytes())
    for i in reversed(range(100)):
        piece = model.pieces.add()
        piece.piece, piece.score = f"<extra_id_{i}>", 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    out.write_bytes(model.SerializeToString())
    return out


def _run(cmd, env, what) -> dict:
    """Runs one engine; its wall time, CPU time (user + system) and the load average around it."""
    log(f"[{what}] " + " ".join(cmd))
    before, load_before = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "cpu_share": cpu / wall / (os.cpu_count() or 1),
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def _env(args, vocab_file: pathlib.Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DSS_VOCAB"}  # the tasks' default (`t5`) setting
    env.update(DSS_DATA_DIR=str(args.data_dir), DSS_T5_VOCAB_FILE=str(vocab_file), JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3")
    return env


def run_t5x(args, work: pathlib.Path, vocab_file: pathlib.Path) -> dict:
    import t5x

    half = args.steps // 2
    model_dir = work / "t5x"
    network = {"dtype": "float32", **(TINY_T5X if args.tiny else {})}
    cmd = [sys.executable, "-m", "t5x.train", f"--gin_search_paths={pathlib.Path(t5x.__file__).parents[1]}",
           f"--gin_file={ROOT / 'gin' / 't5x' / 'dss_cqa_small.gin'}",
           f"--gin.MODEL_DIR='{model_dir}'", "--gin.INITIAL_CHECKPOINT_PATH=None",
           f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{vocab_file}'",
           f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {LENGTH}, 'targets': {LENGTH}}}",
           f"--gin.TRAIN_STEPS={args.steps}", f"--gin.BATCH_SIZE={SEQUENCES_PER_STEP}",
           "--gin.train/utils.DatasetConfig.pack=False", "--gin.DROPOUT_RATE=0.0",
           "--gin.__main__.train.train_eval_dataset_cfg=None",
           "--gin.__main__.train.infer_eval_dataset_cfg=None",
           f"--gin.utils.SaveCheckpointConfig.period={half}"]  # T5X summarises once per checkpoint period
    cmd += [f"--gin.network.T5Config.{k}={v!r}" for k, v in network.items()]
    process = _run(cmd, _env(args, vocab_file), "t5x")
    summary = _t5x_scalars(model_dir / "train")
    last = summary[args.steps]
    return _engine_result(
        "upstream T5X (t5x.train, gin/t5x/dss_cqa_small.gin)", last["timing/steps_per_second"], last["loss"],
        summary[half]["loss"],
        "T5X's: cross-entropy (+ z-loss 1e-4) of the mixture batch, AVERAGE_PER_SEQUENCE normalised",
        "Adafactor (T5X t5_1_1), constant 1e-3", process)


def _engine_result(engine: str, steps_per_second: float, loss: float, loss_first_half: float,
                   loss_definition: str, optimizer: str, process: dict) -> dict:
    """One engine's result row: step time and throughput from its logged steps/s, plus its losses."""
    step_s = 1.0 / steps_per_second
    return {"engine": engine, "s_per_step": step_s, "examples_per_s": SEQUENCES_PER_STEP / 2 / step_s,
            "loss": loss, "loss_first_half": loss_first_half, "loss_definition": loss_definition,
            "optimizer": optimizer, **process}


def _t5x_scalars(event_dir: pathlib.Path) -> dict[int, dict[str, float]]:
    import tensorflow as tf

    out: dict[int, dict[str, float]] = {}
    for file in sorted(event_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.dtype in (tf.float32.as_datatype_enum,
                                                                       tf.float64.as_datatype_enum):
                    out.setdefault(event.step, {})[value.tag] = float(tf.make_ndarray(value.tensor))
    return out


def run_dss_jax(args, work: pathlib.Path, vocab_file: pathlib.Path) -> dict:
    half = args.steps // 2
    model_dir = work / "dss_jax"
    overrides = {"dropout_rate": 0.0, "dtype": "float32", **(TINY_DSS if args.tiny else {})}
    cmd = [sys.executable, "-m", "dss_jax.train", f"--gin_file={ROOT / 'gin' / 'dss_cqa_small.gin'}",
           f"--gin.MODEL_DIR='{model_dir}'", "--gin.INITIAL_CHECKPOINT='random'",
           f"--gin.model_config.overrides={overrides!r}",
           f"--gin.InputConfig.sequence_lengths={{'inputs': {LENGTH}, 'targets': {LENGTH}}}",
           f"--gin.InputConfig.batch_size={SEQUENCES_PER_STEP // 2}", "--gin.InputConfig.pack=False",
           f"--gin.TrainConfig.steps={args.steps}", f"--gin.TrainConfig.log_every={half}",
           "--gin.TrainConfig.progress_bar=False", "--gin.TrainConfig.tensorboard=False",
           "--gin.EvalConfig.every=0", "--gin.EvalConfig.max_examples=8", "--gin.EvalConfig.max_decode_len=8",
           f"--gin.CheckpointConfig.every={args.steps}"]
    process = _run(cmd, _env(args, vocab_file), "dss_jax")
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r.get("kind") == "train"}
    last = train[args.steps]
    return _engine_result(
        "dss_jax (python -m dss_jax.train, gin/dss_cqa_small.gin)", last["steps_per_sec"], last["loss"],
        train[half]["loss"], "dss_jax's paired objective: 0.5 label + 0.5 rationale token-mean cross-entropy",
        "AdamW 5e-5, linear decay", process)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        vocab_file = t5_1_1_vocabulary(args.spm, work / "spm8k.100extra.model")
        runners = {"t5x": run_t5x, "dss_jax": run_dss_jax}
        results = [runners[name](args, work, vocab_file) for name in args.engines]
    print(f"{'engine':58s} {'s/step':>8s} {'examples/s':>11s} {'loss @N/2':>10s} {'loss @N':>9s} "
          f"{'run wall s':>10s} {'run CPU s':>9s} {'CPU share':>9s}")
    for r in results:
        print(f"{r['engine']:58s} {r['s_per_step']:8.3f} {r['examples_per_s']:11.2f} "
              f"{r['loss_first_half']:10.3f} {r['loss']:9.3f} {r['wall_s']:10.1f} {r['cpu_s']:9.1f} "
              f"{r['cpu_share']:9.0%}")
    print(json.dumps({"bench": "engines", "steps": args.steps, "tiny": args.tiny, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
