"""The teacher step of distilling step-by-step: few-shot CoT prompts, an OpenAI-compatible
client with retries, a resumable completion cache, and output in the datasets.zip layout.

    python -m dss_jax.teacher --benchmark cqa --split train --data_dir DIR --out_dir OUT \
        --endpoint http://localhost:8000/v1 --model NAME

Library use: `run_teacher(get_benchmark("cqa"), data_dir, "train", out_dir, TeacherClient(...))`.
A new benchmark is added with `register_benchmark(TeacherBenchmark(...))`.
"""
from dss_jax.teacher.benchmarks import TeacherBenchmark, get_benchmark, register_benchmark, registered_benchmarks
from dss_jax.teacher.client import (
    Completion,
    GenerationConfig,
    RetryPolicy,
    Secret,
    TeacherClient,
    TeacherRequestError,
    resolve_api_key,
)
from dss_jax.teacher.runner import TeacherReport, run_teacher

__all__ = [
    "Completion",
    "GenerationConfig",
    "RetryPolicy",
    "Secret",
    "TeacherBenchmark",
    "TeacherClient",
    "TeacherReport",
    "TeacherRequestError",
    "get_benchmark",
    "register_benchmark",
    "registered_benchmarks",
    "resolve_api_key",
    "run_teacher",
]
