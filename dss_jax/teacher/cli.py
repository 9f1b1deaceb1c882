"""Command line of the teacher step: `python -m dss_jax.teacher --benchmark cqa --split train ...`.

Reads the rows of `DATA_DIR/<benchmark>/<benchmark>_<split>.json`, asks an
OpenAI-compatible endpoint for a few-shot chain-of-thought completion per row (resuming
from the cache under `OUT/teacher_runs/`), and writes `OUT/<benchmark>/llm/<split>_CoT_<i>.json`.
Exit status 0 when every row has a completion, 1 when some rows failed (rerun to resume),
2 for a bad setting or unreadable input, named in one `error:` line on stderr.
The API key comes from `--api_key_file` or DSS_TEACHER_API_KEY / OPENAI_API_KEY and is
never printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import math
import os
import sys
from typing import List, Optional

from dss_jax.teacher.benchmarks import get_benchmark, registered_benchmarks
from dss_jax.teacher.client import (
    DEFAULT_MAX_RESPONSE_BYTES,
    GenerationConfig,
    RetryPolicy,
    TeacherClient,
    resolve_api_key,
)
from dss_jax.teacher.runner import run_teacher

ENDPOINT_ENV = "DSS_TEACHER_ENDPOINT"
MODEL_ENV = "DSS_TEACHER_MODEL"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dss_jax.teacher",
        description="Few-shot chain-of-thought teacher completions for distilling step-by-step, "
        "written in the datasets.zip layout.",
    )
    parser.add_argument("--benchmark", required=True,
                        help=f"one of: {', '.join(registered_benchmarks())}, or one registered by --import")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="Python module to import first, e.g. one that calls register_benchmark (repeatable)")
    parser.add_argument("--split", required=True, help="train, valid (or validation) or test: the row file to annotate")
    parser.add_argument("--data_dir", default=os.environ.get("DSS_DATA_DIR"),
                        help="folder in the datasets.zip layout holding the rows (default: $DSS_DATA_DIR)")
    parser.add_argument("--out_dir", required=True, help="where <benchmark>/llm/<split>_CoT_<i>.json and teacher_runs/ go")
    parser.add_argument("--endpoint", default=os.environ.get(ENDPOINT_ENV),
                        help=f"OpenAI-compatible base URL, e.g. http://localhost:8000/v1 (default: ${ENDPOINT_ENV})")
    parser.add_argument("--model", default=os.environ.get(MODEL_ENV), help=f"model name (default: ${MODEL_ENV})")
    parser.add_argument("--chat", action="store_true", help="use /chat/completions (prompt as one user message)")
    parser.add_argument("--api_key_file", default=None,
                        help="file whose first line is the API key (else $DSS_TEACHER_API_KEY or $OPENAI_API_KEY)")
    parser.add_argument("--prompt_file", default=None, help="your own few-shot template instead of the packaged one")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--stop", action="append", default=None,
                        help="stop sequence (repeatable; default: the benchmark's, e.g. '\\n\\nQ:')")
    parser.add_argument("--timeout_s", type=float, default=120.0,
                        help="total time one attempt may take: connect, send and the whole answer")
    parser.add_argument("--max_response_bytes", type=int, default=DEFAULT_MAX_RESPONSE_BYTES,
                        help="a larger answer is refused and its row fails (default 1 MiB)")
    parser.add_argument("--max_retries", type=int, default=6)
    parser.add_argument("--backoff_base_s", type=float, default=1.0)
    parser.add_argument("--backoff_max_s", type=float, default=60.0)
    parser.add_argument("--max_failed_rows", type=int, default=10,
                        help="stop sending new requests once more rows than this have failed for good")
    parser.add_argument("--cache", default=None, help="cache file (default: OUT/teacher_runs/cache.sqlite)")
    parser.add_argument("--no_progress", action="store_true", help="no tqdm progress bar")
    return parser


def _decode_escapes(stop: str) -> str:
    """Let `--stop '\\n\\nQ:'` on a shell mean two newlines then `Q:`."""
    return stop.replace("\\n", "\n").replace("\\t", "\t")


def _number_setting_errors(args: argparse.Namespace) -> List[str]:
    """Every numeric flag outside its accepted range, as 'flag must be ..., got value'."""
    rules = [
        ("--concurrency", args.concurrency, args.concurrency > 0, "a positive integer"),
        ("--limit", args.limit, args.limit is None or args.limit > 0, "a positive integer"),
        ("--max_tokens", args.max_tokens, args.max_tokens > 0, "a positive integer"),
        ("--temperature", args.temperature, math.isfinite(args.temperature) and args.temperature >= 0,
         "a number >= 0"),
        ("--timeout_s", args.timeout_s, math.isfinite(args.timeout_s) and args.timeout_s > 0, "a number of seconds > 0"),
        ("--max_response_bytes", args.max_response_bytes, args.max_response_bytes > 0, "a positive integer"),
        ("--max_retries", args.max_retries, args.max_retries >= 0, "an integer >= 0"),
        ("--backoff_base_s", args.backoff_base_s, math.isfinite(args.backoff_base_s) and args.backoff_base_s >= 0,
         "a number of seconds >= 0"),
        ("--backoff_max_s", args.backoff_max_s, math.isfinite(args.backoff_max_s) and args.backoff_max_s >= 0,
         "a number of seconds >= 0"),
        ("--max_failed_rows", args.max_failed_rows, args.max_failed_rows >= 0, "an integer >= 0"),
    ]
    return [f"{flag} must be {accepted}, got {value}" for flag, value, ok, accepted in rules if not ok]


def _build(args: argparse.Namespace):
    """(benchmark, generation settings, client) from the flags; ValueError names the bad setting."""
    errors = _number_setting_errors(args)
    if errors:
        raise ValueError("; ".join(errors))
    if not os.path.isdir(args.data_dir):
        raise ValueError(f"--data_dir {args.data_dir} is not a folder")
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--import {module}: cannot import it ({e})") from None
    benchmark = get_benchmark(args.benchmark)
    if args.prompt_file:
        if not os.path.isfile(args.prompt_file):
            raise ValueError(f"--prompt_file {args.prompt_file} is not a file")
        benchmark = dataclasses.replace(benchmark, prompt_file=args.prompt_file)
    stop = tuple(_decode_escapes(s) for s in args.stop) if args.stop else benchmark.stop
    generation = GenerationConfig(max_tokens=args.max_tokens, temperature=args.temperature, stop=stop)
    client = TeacherClient(
        base_url=args.endpoint,
        model=args.model,
        api_key=resolve_api_key(args.api_key_file),
        chat=args.chat,
        timeout_s=args.timeout_s,
        retry=RetryPolicy(max_retries=args.max_retries, backoff_base_s=args.backoff_base_s,
                          backoff_max_s=args.backoff_max_s),
        max_response_bytes=args.max_response_bytes,
    )
    return benchmark, generation, client


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = [flag for flag, value in (("--data_dir", args.data_dir), ("--endpoint", args.endpoint),
                                        ("--model", args.model)) if not value]
    if missing:
        print(f"error: {', '.join(missing)} required (flag or environment)", file=sys.stderr)
        return 2
    try:
        benchmark, generation, client = _build(args)
    except ValueError as error:  # the messages name the setting and never hold the key
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        report = run_teacher(
            benchmark, args.data_dir, args.split, args.out_dir, client, generation,
            cache_path=args.cache, concurrency=args.concurrency, limit=args.limit,
            max_failed_rows=args.max_failed_rows, progress=not args.no_progress,
        )
    except (ValueError, OSError) as error:  # unreadable or invalid rows, an unwritable --out_dir
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.to_json())
    if not report.complete:
        print(f"{len(report.failed_rows)} rows failed and {report.rows_requested - report.rows_done} have no "
              "completion; no output files were written. Rerun the same command to resume.", file=sys.stderr)
        return 1
    return 0
