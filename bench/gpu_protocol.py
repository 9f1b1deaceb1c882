"""GPU version of the training benchmark: T5 1.1 base, bfloat16, a batch that fills the card.

One prepared script for a lent accelerator (it finishes in well under 8 minutes on an
H100/H200-class GPU): it measures the card's bf16 matmul peak, then times the same
jitted, paired, one-forward-pass train step as the CPU protocol (`dss_jax.trainer`) on
packed synthetic CQA-shaped rows (inputs and targets are fully packed, so every token is
real), and prints s/step, examples/s, tokens/s and MFU against both the vendor's dense
bf16 peak and the measured matmul peak. Needs only jax, flax, optax and dss_jax (no
seqio/TensorFlow, no ../shared: the device machine has neither).

    python bench/gpu_protocol.py                          # auto batch: the largest that fits
    python bench/gpu_protocol.py --rows 256 --steps 20
    python bench/gpu_protocol.py --config t5_1_1_tiny --rows 8 --steps 3 --matmul_n 256   # CPU smoke run

Model FLOPs follow the CPU protocol: 6 x (encoder matmul params x encoder tokens +
decoder matmul params incl. output layer x decoder tokens); attention scores are not counted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

VENDOR_BF16_DENSE_PEAK = {  # FLOP/s, vendor spec sheets (dense, no sparsity)
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "B200": 2250e12,
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def vendor_peak(device) -> tuple[str, float | None]:
    kind = getattr(device, "device_kind", str(device))
    for name, peak in VENDOR_BF16_DENSE_PEAK.items():
        if name in kind.upper():
            return kind, peak
    return kind, None


def matmul_peak(n: int, repeats: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def synthetic_packed_batch(rows: int, enc_len: int, dec_len: int, vocab: int, seed: int = 0) -> dict:
    """Rows fully packed with CQA-shaped pairs: per pair a ~55-token input with a
    ~4-token label or ~30-token rationale target, alternating tasks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {k: np.zeros((rows, enc_len if k.startswith("encoder") else dec_len), np.int32)
           for k in ("encoder_input_tokens", "encoder_segment_ids", "decoder_input_tokens",
                     "decoder_target_tokens", "decoder_segment_ids", "task_ids")}
    out["decoder_loss_weights"] = np.zeros((rows, dec_len), np.float32)
    examples = 0
    for r in range(rows):
        e = d = 0
        seg = 0
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
    attn = 4 * config.d_model * config.inner_dim
    mlp = (3 if config.is_gated else 2) * config.d_model * config.d_ff
    enc = config.num_encoder_layers * (attn + mlp)
    dec = config.num_decoder_layers * (2 * attn + mlp) + config.d_model * config.vocab_size
    return enc, dec


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="t5_1_1_base")
    p.add_argument("--rows", type=int, default=0, help="packed rows per step; 0 = try 512, 256, 128 until it fits")
    p.add_argument("--enc_len", type=int, default=512)
    p.add_argument("--dec_len", type=int, default=192)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--matmul_n", type=int, default=8192)
    p.add_argument("--remat", default="none", choices=["none", "full", "minimal"])
    args = p.parse_args()

    import jax

    import dss_jax
    from dss_jax import losses, partitioning, trainer

    device = jax.devices()[0]
    kind, vendor = vendor_peak(device)
    measured_peak = matmul_peak(args.matmul_n)
    log(f"device {kind}: measured bf16 matmul {measured_peak / 1e12:.1f} TFLOP/s")
    config = dss_jax.get_config(args.config, dtype="bfloat16", dropout_rate=0.0, remat_policy=args.remat)
    model = dss_jax.T5(config)
    mesh = partitioning.make_mesh(data=-1, model=1)
    rules = partitioning.logical_axis_rules()
    optimizer = trainer.make_optimizer("adamw", learning_rate=5e-5, clip=1.0)
    state, shardings = trainer.create_sharded_train_state(
        model, optimizer, jax.random.PRNGKey(0), ((1, 8), (1, 8)), mesh, rules)
    enc_params, dec_params = matmul_params(config)

    for rows in ([args.rows] if args.rows else [512, 256, 128, 64]):
        batch, examples = synthetic_packed_batch(rows, args.enc_len, args.dec_len, config.vocab_size)
        step = trainer.make_train_step(model, optimizer, losses.LossConfig(mode="paired"), mesh, shardings,
                                       partitioning.batch_shardings(mesh, sorted(batch)), rules,
                                       enable_dropout=False)
        try:
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            compile_s = time.perf_counter() - t0
            break
        except Exception as e:  # out of memory: halve the batch
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            log(f"{rows} rows do not fit ({type(e).__name__}); trying fewer")
            state, shardings = trainer.create_sharded_train_state(
                model, optimizer, jax.random.PRNGKey(0), ((1, 8), (1, 8)), mesh, rules)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    med = statistics.median(times[args.warmup:])
    enc_tokens = int((batch["encoder_segment_ids"] > 0).sum())
    dec_tokens = int((batch["decoder_segment_ids"] > 0).sum())
    flops = 6.0 * (enc_params * enc_tokens + dec_params * dec_tokens)
    result = {
        "device": kind, "config": args.config, "dtype": "bfloat16", "rows": rows,
        "enc_len": args.enc_len, "dec_len": args.dec_len, "examples_per_step": examples,
        "compile_s": compile_s, "median_s_per_step": med, "examples_per_s": examples / med,
        "tokens_per_s": (enc_tokens + dec_tokens) / med, "model_tflops_per_s": flops / med / 1e12,
        "measured_bf16_matmul_tflops": measured_peak / 1e12,
        "mfu_vs_measured_matmul": flops / med / measured_peak,
        "mfu_vs_vendor_peak": (flops / med / vendor) if vendor else None,
        "loss_last": float(jax.device_get(m["loss"])),
    }
    print(json.dumps(result), flush=True)
    log(f"{kind} {args.config} bf16: {med:.3f} s/step, {examples / med:.0f} examples/s, "
        f"{result['model_tflops_per_s']:.0f} TFLOP/s model, MFU {result['mfu_vs_measured_matmul']:.1%} of measured "
        f"matmul peak" + (f", {result['mfu_vs_vendor_peak']:.1%} of vendor peak" if vendor else ""))


if __name__ == "__main__":
    main()
