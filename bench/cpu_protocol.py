"""Run the CPU benchmark protocol for dss_jax and the reference PyTorch peer, in one run.

The protocol is ../shared/bench/PROTOCOL.md: CQA, distilling step-by-step, T5 1.1 small
(vocab 32128, random init, fp32, dropout 0), 8 examples a step (8 label + 8 rationale
sequences), 5 warm-up + 40 timed steps, median seconds/step. Each measurement runs in its
own process, one at a time (two at once slow each other 2-4x on 2 cores), alternating
between the peer and us, so that drifts of the machine hit both.

    python bench/cpu_protocol.py                      # everything (about 35 minutes)
    python bench/cpu_protocol.py --only train         # training modes only
    python bench/cpu_protocol.py --json results.json  # also keep the raw results
    python bench/cpu_protocol.py --only train --steps 20 --warmup 3 \
        --skip peer/train_compile ours/train_nopack  # peer, protocol script and trainer CLI, fp32 + bf16

Three systems: ``peer`` (``../shared/bench/hf_dss_peer.py``), ``ours``
(``bench/dss_jax_protocol.py``, the protocol script) and ``trainer``
(``bench/trainer_cli_protocol.py``: the same work through ``python -m dss_jax.train``, the
command users run, its step times read from the run's ``metrics.jsonl``).  The trainer rows
also show their step time over the protocol script's in the same mode.  The CPU (model name,
AVX2 / AVX-512 / AMX flags) is printed with the results: the bf16 figures depend on it.

Printed per mode: median s/step, examples/s, ours/peer ratio, model FLOP/s over the
measured fp32 matmul peak (MFU), peak RSS; and decoding sequences/s (batch 16, labels up
to 16 new tokens, rationales exactly 128 new tokens; the peer in fp32, ours in fp32 and
in bf16).

Model FLOPs per step = 6 x (encoder matmul parameters x real encoder tokens + decoder
matmul parameters incl. the output layer x real decoder tokens), real = non-pad tokens
incl. EOS, averaged over the timed steps (the same batches for both systems). Embedding
lookups are not counted.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_SHARED = pathlib.Path(os.environ.get("DSS_SHARED_DIR", REPO.parent / "shared"))

# T5 1.1 small, untied (PROTOCOL.md): matmul parameters per token.
D_MODEL, D_FF, HEADS, D_KV, LAYERS, VOCAB = 512, 1024, 6, 64, 8, 32128
_ATTN = 4 * D_MODEL * HEADS * D_KV
_MLP = 3 * D_MODEL * D_FF
ENCODER_MATMUL_PARAMS = LAYERS * (_ATTN + _MLP)
DECODER_MATMUL_PARAMS = LAYERS * (2 * _ATTN + _MLP) + D_MODEL * VOCAB


def load_peer_module(shared: pathlib.Path):
    """Import the peer script as a module, to reuse its exact data and tokenizer code."""
    path = shared / "bench" / "hf_dss_peer.py"
    if not path.is_file():
        raise FileNotFoundError(f"peer script {path} not found; pass --shared_dir or set DSS_SHARED_DIR")
    spec = importlib.util.spec_from_file_location("hf_dss_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_flops_per_step(shared: pathlib.Path, warmup: int, steps: int, batch: int, max_len: int) -> dict:
    """Mean model FLOPs of the timed steps, from real token counts of the protocol's batches."""
    peer = load_peer_module(shared)
    examples = peer.load_examples(str(shared / "dss_datasets" / "cqa"), (warmup + steps) * batch)
    tok = peer.Tok(str(shared / "bench" / "spm8k.model"))
    timed = examples[warmup * batch:(warmup + steps) * batch]
    enc = sum(len(tok(e[k], max_len)) for e in timed for k in ("pred_in", "expl_in"))
    dec = sum(len(tok(e[k], max_len)) for e in timed for k in ("pred_tgt", "expl_tgt"))
    flops = 6.0 * (ENCODER_MATMUL_PARAMS * enc + DECODER_MATMUL_PARAMS * dec) / steps
    return {"encoder_tokens_per_step": enc / steps, "decoder_tokens_per_step": dec / steps,
            "model_flops_per_step": flops}


def run_json(cmd: list[str], env: dict, log_path: pathlib.Path) -> dict:
    """Run one measurement process; its last stdout line is its JSON result."""
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}; see {log_path}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{cmd} printed no JSON result; see {log_path}")
    result = json.loads(lines[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def cpu_kind(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The processor's model name and the vector / matrix extensions the bf16 paths depend on."""
    try:
        text = pathlib.Path(cpuinfo).read_text()
    except OSError:
        return {"model": "unknown", "flags": []}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def build_plan(only: str | None) -> list[tuple[str, str, list[str]]]:
    """(system, mode, extra args) in alternating order."""
    train = [
        ("peer", "train", []), ("ours", "train", []), ("trainer", "train", []),
        ("peer", "train_bf16", []), ("ours", "train_bf16", []), ("trainer", "train_bf16", []),
        ("peer", "train_compile", []), ("ours", "train_nopack", ["--no_pack"]),
    ]
    decode = [("peer", "decode", []), ("ours", "decode", []), ("ours", "decode_bf16", [])]
    if only == "train":
        return train
    if only == "decode":
        return decode
    return train + decode


def format_table(results: dict, flops: dict, peak: float) -> str:
    rows = ["| system | mode | s/step | examples/s | ours/peer-fp32 | MFU (fp32 peak) | peak RSS GiB | "
            "s/step vs protocol script |",
            "|---|---|---|---|---|---|---|---|"]
    peer_fp32 = results.get(("peer", "train"), {}).get("examples_per_s")
    for (system, mode), r in results.items():
        if "median_s_per_step" not in r:
            continue
        eps = r["examples_per_s"]
        ratio = f"{eps / peer_fp32:.2f}" if peer_fp32 else "-"
        mfu = flops["model_flops_per_step"] / r["median_s_per_step"] / peak
        rss = r.get("peak_rss_mib_self", float("nan")) / 1024
        script = results.get(("ours", mode), {}).get("median_s_per_step")
        versus = f"{r['median_s_per_step'] / script - 1:+.1%}" if system == "trainer" and script else "-"
        rows.append(f"| {system} | {mode} | {r['median_s_per_step']:.3f} | {eps:.2f} | {ratio} | {mfu:.1%} | "
                    f"{rss:.2f} | {versus} |")
    rows += ["", "| system | task | sequences/s | ours/peer |", "|---|---|---|---|"]
    for task in ("label", "rationale"):
        peer_r = results.get(("peer", "decode"), {}).get(f"decode_{task}")
        if peer_r:
            rows.append(f"| peer (fp32) | {task} | {peer_r['sequences_per_s']:.2f} | - |")
        for mode, label in (("decode", "ours (fp32)"), ("decode_bf16", "ours (bf16)")):
            r = results.get(("ours", mode), {}).get(f"decode_{task}")
            if r:
                ratio = f"{r['sequences_per_s'] / peer_r['sequences_per_s']:.2f}" if peer_r else "-"
                rows.append(f"| {label} | {task} | {r['sequences_per_s']:.2f} | {ratio} |")
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared_dir", type=pathlib.Path, default=DEFAULT_SHARED)
    p.add_argument("--only", choices=["train", "decode"], default=None)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--json", type=pathlib.Path, default=None, help="write raw results here")
    p.add_argument("--log", type=pathlib.Path, default=pathlib.Path("bench_cpu_protocol.log"))
    p.add_argument("--skip", nargs="*", default=[], metavar="SYSTEM/MODE",
                   help="measurements to leave out, e.g. peer/train_compile (its torch.compile warm-up takes "
                        "many minutes on 2 cores)")
    p.add_argument("--ours_xla_flags", default="--xla_cpu_experimental_xnn_fusion_type=dot",
                   help="XLA_FLAGS for our processes (XNNPACK dot fusion measured fastest here)")
    args = p.parse_args()

    env = dict(os.environ, PYTHONUNBUFFERED="1", DSS_SHARED_DIR=str(args.shared_dir),
               TF_CPP_MIN_LOG_LEVEL="3")
    python = sys.executable
    cpu = cpu_kind()
    peak = run_json([python, str(HERE / "matmul_peak.py")], env, args.log)
    flops = model_flops_per_step(args.shared_dir, args.warmup, args.steps, batch=8, max_len=128)
    print(json.dumps({"cpu": cpu, "matmul_peak": peak, "model_flops": flops}), file=sys.stderr)

    results = {}
    for system, mode, extra in build_plan(args.only):
        if f"{system}/{mode}" in args.skip:
            continue
        steps = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        if system == "peer":
            cmd = [python, str(args.shared_dir / "bench" / "hf_dss_peer.py"), "--mode", mode, *steps]
            run_env = env
        else:
            script = "trainer_cli_protocol.py" if system == "trainer" else "dss_jax_protocol.py"
            cmd = [python, str(HERE / script), "--mode", mode.replace("_nopack", ""), *steps]
            run_env = dict(env, XLA_FLAGS=args.ours_xla_flags)
        results[(system, mode)] = run_json(cmd + extra, run_env, args.log)
        if args.json:  # after every measurement, so that an interrupted run keeps what it measured
            args.json.write_text(json.dumps({"cpu": cpu, "matmul_peak": peak, "model_flops": flops,
                                             "results": {f"{s}/{m}": r for (s, m), r in results.items()}},
                                            indent=1))

    table = format_table(results, flops, peak["peak_flops"])
    print(f"CPU: {cpu['model']}, {cpu.get('cores')} cores, flags {' '.join(cpu['flags']) or 'none of'} "
          f"(of avx2 avx512f avx512_bf16 amx_bf16 amx_tile)")
    print(f"fp32 matmul peak: {peak['peak_flops'] / 1e9:.1f} GFLOP/s "
          f"(XLA {peak['xla_flops'] / 1e9:.1f}, torch {(peak['torch_flops'] or 0) / 1e9:.1f}); "
          f"model GFLOP/step {flops['model_flops_per_step'] / 1e9:.2f}")
    print(table)


if __name__ == "__main__":
    main()
