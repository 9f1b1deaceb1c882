"""Measure this machine's matrix-multiply peak (FLOP/s), the denominator of MFU.

The CPU protocol (../shared/bench/PROTOCOL.md) asks for model FLOP/s over the measured
matmul peak of the same machine in the same run. We time square matmuls in XLA (what our
trainer runs) and in PyTorch (what the peer runs) and report both; the harness divides by
the larger, so neither side is flattered by a slow reference kernel.

    python bench/matmul_peak.py [--n 2048] [--repeats 20] [--dtype float32]

prints one JSON line: {"xla_flops": ..., "torch_flops": ..., "peak_flops": ...}.
"""
import argparse
import json
import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def xla_matmul_flops(n: int, repeats: int, dtype: str) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype=getattr(jnp, dtype))
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype=getattr(jnp, dtype))
    matmul = jax.jit(lambda x, y: x @ y)
    seconds = median_seconds(lambda: matmul(a, b).block_until_ready(), repeats)
    return 2.0 * n**3 / seconds


def torch_matmul_flops(n: int, repeats: int, dtype: str, threads: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    t = getattr(torch, dtype)
    a = torch.randn(n, n, dtype=t)
    b = torch.randn(n, n, dtype=t)
    seconds = median_seconds(lambda: a @ b, repeats)
    return 2.0 * n**3 / seconds


def measure(n: int = 2048, repeats: int = 20, dtype: str = "float32", threads: int = 2) -> dict:
    xla = xla_matmul_flops(n, repeats, dtype)
    torch_flops = torch_matmul_flops(n, repeats, dtype, threads)
    peak = max(f for f in (xla, torch_flops) if f is not None)
    return {"n": n, "dtype": dtype, "xla_flops": xla, "torch_flops": torch_flops, "peak_flops": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(json.dumps(measure(args.n, args.repeats, args.dtype, args.threads)), flush=True)


if __name__ == "__main__":
    main()
