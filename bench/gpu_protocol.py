"""GPU benchmark in one short script: T5 1.1 base and large bf16 training MFU, decode
throughput and peak memory on one lent accelerator (H100/H200 class: under 5 minutes).

For each training config it picks the largest batch that fits from the compiled step's
memory analysis (one probe compile at 8 rows, then the chosen size, at most `--max_rows`;
nothing runs out of memory; layers scanned, so each compile is short), then times the
jitted, paired, one-forward-pass train step of the CPU protocol (`dss_jax.trainer`) on packed synthetic CQA-shaped rows (every token is real), and reports
s/step, examples/s, tokens/s and MFU against the card's measured bf16 matmul peak and the
vendor's dense bf16 peak. Then it times greedy decoding of rationale-length outputs (128
new tokens, no early stop) with weights prepared once, and reports sequences/s and new
tokens/s. Peak device memory comes from the device's allocator statistics (the host's
peak RSS where the backend has none, as on CPU). Needs only jax, flax, optax, dss_jax
and bench/matmul_peak.py beside it (no seqio/TensorFlow, no ../shared).

    python bench/gpu_protocol.py                     # base + large training, base decoding
    python bench/gpu_protocol.py --tiny              # CPU smoke run of the whole script (seconds)

The last stdout line is one JSON object (`train`: one row per config, `decode`: one row
per config). Model FLOPs follow the CPU protocol: 6 x (encoder matmul params x encoder
tokens + decoder matmul params incl. output layer x decoder tokens); attention scores
are not counted. The command for a lent machine is in docs/speed.md ("GPU harness").
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from typing import Any, NamedTuple

VENDOR_BF16_DENSE_PEAK = {  # FLOP/s, vendor spec sheets (dense, no sparsity)
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "B200": 2250e12,
}
PROBE_ROWS = 8
TINY = dict(train_configs="t5_1_1_tiny", decode_configs="t5_1_1_tiny", enc_len=128, dec_len=48, steps=2, warmup=1,
            matmul_n=256, max_rows=16, decode_batch=8, decode_len=16, decode_input_len=32)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def vendor_peak(device) -> tuple[str, float | None]:
    kind = getattr(device, "device_kind", str(device))
    for name, peak in VENDOR_BF16_DENSE_PEAK.items():
        if name in kind.upper():
            return kind, peak
    return kind, None


def matmul_peak(n: int, repeats: int = 10) -> float:
    """bf16 FLOP/s of an n x n x n matmul (float32 accumulation, bf16 result)."""
    import jax
    import jax.numpy as jnp
    from matmul_peak import median_seconds  # bench/ is sys.path[0] for a script

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / median_seconds(lambda: f(a, b).block_until_ready(), repeats)


def synthetic_packed_batch(rows: int, enc_len: int, dec_len: int, vocab: int, seed: int = 0):
    """Rows fully packed with CQA-shaped pairs: per pair a ~55-token input with a
    ~4-token label or ~30-token rationale target, alternating tasks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {k: np.zeros((rows, enc_len if k.startswith("encoder") else dec_len), np.int32)
           for k in ("encoder_input_tokens", "encoder_segment_ids", "decoder_input_tokens",
                     "decoder_target_tokens", "decoder_segment_ids", "task_ids")}
    out["decoder_loss_weights"] = np.zeros((rows, dec_len), np.float32)
    examples = 0.0
    for r in range(rows):
        e = d = seg = 0
        while True:
            task = seg % 2
            li = int(rng.integers(40, 70))
            lt = int(rng.integers(3, 6)) if task == 0 else int(rng.integers(20, 40))
            if e + li > enc_len or d + lt > dec_len:
                break
            seg += 1
            examples += 0.5
            out["encoder_input_tokens"][r, e:e + li] = rng.integers(3, vocab, li)
            out["encoder_segment_ids"][r, e:e + li] = seg
            tgt = rng.integers(3, vocab, lt)
            tgt[-1] = 1
            out["decoder_target_tokens"][r, d:d + lt] = tgt
            out["decoder_input_tokens"][r, d + 1:d + lt] = tgt[:-1]
            out["decoder_segment_ids"][r, d:d + lt] = seg
            out["decoder_loss_weights"][r, d:d + lt] = 1
            out["task_ids"][r, d:d + lt] = task
            e, d = e + li, d + lt
    return out, examples


def matmul_params(config) -> tuple[int, int]:
    """Matmul parameters per encoder token and per decoder token (output layer included)."""
    attn = 4 * config.d_model * config.inner_dim
    mlp = (3 if config.is_gated else 2) * config.d_model * config.d_ff
    enc = config.num_encoder_layers * (attn + mlp)
    dec = config.num_decoder_layers * (2 * attn + mlp) + config.d_model * config.vocab_size
    return enc, dec


def bf16_config(name: str, args):
    """The named config in bf16 without dropout, resolved for this machine (the entrypoint's job)."""
    import dss_jax
    from dss_jax import hardware

    return hardware.resolve(dss_jax.get_config(name, dtype="bfloat16", dropout_rate=0.0, remat_policy=args.remat,
                                               scan_layers=not args.no_scan))


def device_memory_limit(device) -> int | None:
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")


def peak_memory(device) -> dict:
    """The device allocator's peak bytes, or the host's peak RSS where there is none."""
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"kind": "device_peak_bytes_in_use", "bytes": int(stats["peak_bytes_in_use"]),
                "limit_bytes": stats.get("bytes_limit")}
    return {"kind": "host_peak_rss", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}


class StepProgram(NamedTuple):
    """A train step compiled ahead of time for one batch shape, with what runs it."""

    compiled: Any
    model: Any
    optimizer: Any
    batch: dict
    examples: float
    state_bytes: int  # arguments + outputs, less what the donated state aliases
    temp_bytes: int


def compile_step(config, rows: int, args, mesh, rules) -> StepProgram:
    """The paired train step for `rows` packed rows, compiled from abstract shapes."""
    import jax

    import dss_jax
    from dss_jax import losses, partitioning, trainer

    model = dss_jax.T5(config)
    optimizer = trainer.make_optimizer("adamw", learning_rate=5e-5, clip=1.0)
    abstract, shardings = trainer.abstract_sharded_train_state(model, optimizer, jax.random.PRNGKey(0),
                                                               ((1, 8), (1, 8)), mesh, rules)
    batch, examples = synthetic_packed_batch(rows, args.enc_len, args.dec_len, config.vocab_size)
    step = trainer.make_train_step(model, optimizer, losses.LossConfig(mode="paired"), mesh, shardings,
                                   partitioning.batch_shardings(mesh, sorted(batch)), rules, enable_dropout=False)
    with trainer.sharding_context(mesh, rules):
        compiled = step.jitted.lower(abstract, batch).compile()
    memory = compiled.memory_analysis()
    if memory is None:  # a backend without the analysis: `pick_rows` then keeps to the probe's size
        return StepProgram(compiled, model, optimizer, batch, examples, 0, 0)
    state_bytes = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    return StepProgram(compiled, model, optimizer, batch, examples, int(state_bytes), int(memory.temp_size_in_bytes))


def pick_rows(probe: StepProgram, limit: int, max_rows: int) -> int:
    """The most rows (a multiple of 8) whose temporary memory, scaled from the probe's, fits
    in 85 % of the device's `limit` next to the state. Conservative: the probe's temporaries
    include the gradients, which do not grow with rows."""
    if probe.temp_bytes == 0:
        return PROBE_ROWS
    rows = int((0.85 * limit - probe.state_bytes) / (probe.temp_bytes / PROBE_ROWS)) // 8 * 8
    return max(PROBE_ROWS, min(rows, max_rows))


def time_training(name: str, args, device, measured_peak: float, vendor: float | None) -> dict:
    import jax

    from dss_jax import partitioning, trainer

    config = bf16_config(name, args)
    mesh = partitioning.make_mesh(data=1, model=1, devices=[device])
    rules = partitioning.logical_axis_rules()
    t0 = time.perf_counter()
    limit = device_memory_limit(device)  # None on CPU: no probe, `max_rows`
    rows = args.max_rows if limit is None else \
        pick_rows(compile_step(config, PROBE_ROWS, args, mesh, rules), limit, args.max_rows)
    program = compile_step(config, rows, args, mesh, rules)
    compile_s = time.perf_counter() - t0
    state, _ = trainer.create_sharded_train_state(program.model, program.optimizer, jax.random.PRNGKey(0),
                                                  ((1, 8), (1, 8)), mesh, rules)
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = program.compiled(state, program.batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[args.warmup:])
    enc_params, dec_params = matmul_params(config)
    enc_tokens = int((program.batch["encoder_segment_ids"] > 0).sum())
    dec_tokens = int((program.batch["decoder_segment_ids"] > 0).sum())
    flops = 6.0 * (enc_params * enc_tokens + dec_params * dec_tokens)
    row = {
        "config": name, "dtype": "bfloat16", "remat": args.remat, "scan_layers": config.scan_layers,
        "matmul": config.matmul, "rows": rows, "enc_len": args.enc_len, "dec_len": args.dec_len,
        "examples_per_step": program.examples, "compile_s": compile_s, "median_s_per_step": med,
        "examples_per_s": program.examples / med, "tokens_per_s": (enc_tokens + dec_tokens) / med,
        "model_tflops_per_s": flops / med / 1e12,
        "mfu_vs_measured_matmul": flops / med / measured_peak,
        "mfu_vs_vendor_peak": (flops / med / vendor) if vendor else None,
        "compiled_memory_bytes": program.state_bytes + program.temp_bytes,
        "loss_last": float(jax.device_get(metrics["loss"])),
    }
    log(f"train {name}: {rows} rows, {med:.3f} s/step, {row['model_tflops_per_s']:.1f} TFLOP/s, MFU "
        f"{row['mfu_vs_measured_matmul']:.1%} of measured" +
        (f", {row['mfu_vs_vendor_peak']:.1%} of vendor peak" if vendor else ""))
    return row


def time_decoding(name: str, args, device) -> dict:
    import numpy as np

    from dss_jax import decoding
    from dss_jax.model import init_params
    from matmul_peak import median_seconds  # bench/ is sys.path[0] for a script

    del device  # the default device
    config = bf16_config(name, args)
    weights = decoding.prepare_decode_weights(config, init_params(config, 0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, config.vocab_size, (args.decode_batch, args.decode_input_len)).astype(np.int32)
    decode = lambda: decoding.greedy_decode_with_weights(  # noqa: E731
        config, weights, tokens, args.decode_len, eos_id=-1).block_until_ready()  # never stops early
    t0 = time.perf_counter()
    decode()
    compile_s = time.perf_counter() - t0
    seconds = median_seconds(decode, args.decode_repeats)
    row = {"config": name, "dtype": "bfloat16", "batch": args.decode_batch, "input_len": args.decode_input_len,
           "new_tokens": args.decode_len, "decode_kernels": config.decode_kernels, "compile_s": compile_s,
           "median_s_per_batch": seconds, "sequences_per_s": args.decode_batch / seconds,
           "new_tokens_per_s": args.decode_batch * args.decode_len / seconds}
    log(f"decode {name}: batch {args.decode_batch} x {args.decode_len} new tokens, {seconds:.3f} s, "
        f"{row['new_tokens_per_s']:.0f} tokens/s")
    return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smoke run: t5_1_1_tiny, small shapes, a few steps")
    p.add_argument("--train_configs", default="t5_1_1_base,t5_1_1_large")
    p.add_argument("--decode_configs", default="t5_1_1_base")
    p.add_argument("--enc_len", type=int, default=512)
    p.add_argument("--dec_len", type=int, default=192)
    p.add_argument("--max_rows", type=int, default=512, help="most packed rows per training step")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--matmul_n", type=int, default=8192)
    p.add_argument("--remat", default="none", choices=["none", "full", "minimal"])
    p.add_argument("--no_scan", action="store_true", help="unrolled layers (slower to compile)")
    p.add_argument("--decode_batch", type=int, default=256)
    p.add_argument("--decode_input_len", type=int, default=128)
    p.add_argument("--decode_len", type=int, default=128)
    p.add_argument("--decode_repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    return args


def main(argv=None):
    args = parse_args(argv)
    import jax

    device = jax.devices()[0]
    kind, vendor = vendor_peak(device)
    measured = matmul_peak(args.matmul_n)
    log(f"device {kind}: measured bf16 matmul {measured / 1e12:.1f} TFLOP/s"
        + (f", vendor peak {vendor / 1e12:.0f}" if vendor else ""))
    train = [time_training(name, args, device, measured, vendor) for name in args.train_configs.split(",") if name]
    decode = [time_decoding(name, args, device) for name in args.decode_configs.split(",") if name]
    result = {"device": kind, "backend": jax.default_backend(), "jax": jax.__version__,
              "measured_bf16_matmul_tflops": measured / 1e12,
              "vendor_bf16_dense_tflops": vendor / 1e12 if vendor else None,
              "train": train, "decode": decode, "peak_memory": peak_memory(device)}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
