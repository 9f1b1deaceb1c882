"""Run the teacher over one split: prompts -> cached completions -> datasets.zip-layout files.

`run_teacher` renders each row's few-shot prompt, skips rows whose completion for the
same request is already in the cache, sends the rest with bounded concurrency, and
commits each completion to the cache as it arrives. When every requested row has a
completion, it writes `OUT/<benchmark>/llm/<split>_CoT_<i>.json` (file i holds rows
i*B .. i*B+B-1) atomically and returns a `TeacherReport`: rows done, parse failures by
kind, teacher accuracy against gold labels, and tokens used. Rows whose requests fail
for good are named in the report and no output file is written until a rerun fills them.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from dss_jax import storage
from dss_jax.teacher.benchmarks import TeacherBenchmark, file_split_name
from dss_jax.teacher.cache import CachedCompletion, CompletionCache, request_hash
from dss_jax.teacher.client import GenerationConfig, TeacherClient, TeacherRequestError
from dss_jax.teacher.prompts import PromptTemplate

LOGGER = logging.getLogger(__name__)
RUNS_DIR_NAME = "teacher_runs"
MAX_LOGGED_FAILURES = 20


@dataclasses.dataclass
class TeacherReport:
    """What a teacher run did, written next to the cache as JSON."""

    benchmark: str
    split: str
    model: str
    rows_requested: int
    rows_done: int
    rows_from_cache: int
    rows_requested_now: int
    failed_rows: Dict[int, str]
    aborted: bool
    output_files: List[str]
    parse_status_counts: Dict[str, int]
    teacher_accuracy: Optional[float]
    rows_with_gold: int
    prompt_tokens_total: int
    completion_tokens_total: int
    prompt_tokens_this_run: int
    completion_tokens_this_run: int
    wall_s: float

    @property
    def complete(self) -> bool:
        return self.rows_done == self.rows_requested and not self.failed_rows

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["failed_rows"] = {str(k): v for k, v in self.failed_rows.items()}
        data["complete"] = self.complete
        return json.dumps(data, indent=2, sort_keys=True)


def runs_dir(out_dir: os.PathLike) -> pathlib.Path:
    """Where the cache and the run reports live: OUT/teacher_runs/."""
    return pathlib.Path(out_dir) / RUNS_DIR_NAME


def default_cache_path(out_dir: os.PathLike) -> pathlib.Path:
    return runs_dir(out_dir) / "cache.sqlite"


def output_file_paths(out_dir: os.PathLike, benchmark: str, split: str, num_rows: int, rows_per_file: int) -> List[pathlib.Path]:
    llm_dir = pathlib.Path(out_dir) / benchmark / "llm"
    num_files = max(1, -(-num_rows // rows_per_file))
    return [llm_dir / f"{file_split_name(split)}_CoT_{i}.json" for i in range(num_files)]


def write_json_atomically(path: pathlib.Path, value: object) -> None:
    """`value` as JSON, written atomically (see storage.write_text_atomically)."""
    storage.write_text_atomically(path, json.dumps(value))


def write_completion_files(
    out_dir: os.PathLike, benchmark: str, split: str, completions: Sequence[str], rows_per_file: int
) -> List[pathlib.Path]:
    """The datasets.zip layout: one JSON list of completions per B rows, in row order."""
    paths = output_file_paths(out_dir, benchmark, split, len(completions), rows_per_file)
    for i, path in enumerate(paths):
        write_json_atomically(path, list(completions[i * rows_per_file : (i + 1) * rows_per_file]))
    return paths


def output_text(completion: str) -> str:
    """The completion as the datasets.zip files hold it: no leading whitespace."""
    return completion.lstrip()


@dataclasses.dataclass(frozen=True)
class _PlannedRow:
    row_index: int
    request_hash: str


def _prompt(template: PromptTemplate, benchmark: TeacherBenchmark, row: dict, where: str) -> str:
    return template.render(benchmark.prompt_fields(row, where))


def plan_requests(
    benchmark: TeacherBenchmark, template: PromptTemplate, rows: Sequence[dict], client: TeacherClient,
    generation: GenerationConfig, source: str,
) -> List[_PlannedRow]:
    """Every row's request hash (the prompt is rebuilt when sent, to keep memory flat)."""
    planned = []
    for row_index, row in enumerate(rows):
        prompt = _prompt(template, benchmark, row, f"{source} row {row_index}")
        planned.append(_PlannedRow(row_index, request_hash(client.request_payload(prompt, generation))))
    return planned


def _bounded_map(
    executor: concurrent.futures.Executor, jobs: Iterator[Tuple[int, str]], call, max_in_flight: int
) -> Iterator[Tuple[int, concurrent.futures.Future]]:
    """Submit jobs lazily, never more than `max_in_flight` at once; yield them as they finish."""
    in_flight: Dict[concurrent.futures.Future, int] = {}
    jobs = iter(jobs)
    exhausted = False
    while in_flight or not exhausted:
        while not exhausted and len(in_flight) < max_in_flight:
            job = next(jobs, None)
            if job is None:
                exhausted = True
                break
            row_index, prompt = job
            in_flight[executor.submit(call, prompt)] = row_index
        if not in_flight:
            break
        done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            yield in_flight.pop(future), future


def _progress_bar(total: int, initial: int, enabled: bool, description: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="row", dynamic_ncols=True)


def run_teacher(
    benchmark: TeacherBenchmark,
    data_dir: os.PathLike,
    split: str,
    out_dir: os.PathLike,
    client: TeacherClient,
    generation: Optional[GenerationConfig] = None,
    cache_path: Optional[os.PathLike] = None,
    concurrency: int = 8,
    limit: Optional[int] = None,
    max_failed_rows: int = 10,
    progress: bool = False,
) -> TeacherReport:
    """Get a completion for every row of `split` (the first `limit` rows) and write the output files."""
    if concurrency <= 0:
        raise ValueError(f"concurrency must be positive, got {concurrency}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    started = time.monotonic()
    generation = generation or GenerationConfig(stop=benchmark.stop)
    template = benchmark.template()
    file_split = file_split_name(split)
    rows = benchmark.read_rows(pathlib.Path(data_dir), file_split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{benchmark.name}/{file_split} in {data_dir} has no rows")
    source = f"{data_dir}/{benchmark.name}/{file_split}"
    planned = plan_requests(benchmark, template, rows, client, generation, source)
    wanted = [(p.row_index, p.request_hash) for p in planned]

    with CompletionCache(str(cache_path or default_cache_path(out_dir))) as cache:
        cached = cache.lookup(benchmark.name, file_split, wanted)
        pending = [p for p in planned if p.row_index not in cached]
        LOGGER.info("%s/%s: %d rows, %d cached, %d to request", benchmark.name, file_split,
                    len(rows), len(cached), len(pending))
        failed: Dict[int, str] = {}
        aborted = False
        new_prompt_tokens = new_completion_tokens = 0
        bar = _progress_bar(len(rows), len(cached), progress, f"teacher {benchmark.name}/{file_split}")

        def jobs() -> Iterator[Tuple[int, str]]:
            for p in pending:
                if aborted:
                    return
                yield p.row_index, _prompt(template, benchmark, rows[p.row_index], f"{source} row {p.row_index}")

        hashes = dict(wanted)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")
        try:
            for row_index, future in _bounded_map(
                executor, jobs(), lambda prompt: client.complete(prompt, generation), 2 * concurrency
            ):
                try:
                    completion = future.result()
                except TeacherRequestError as error:
                    failed[row_index] = str(error)
                    if len(failed) <= MAX_LOGGED_FAILURES:
                        LOGGER.error("row %d failed: %s", row_index, error)
                    if len(failed) > max_failed_rows and not aborted:
                        aborted = True
                        LOGGER.error("more than %d rows failed; not sending further requests", max_failed_rows)
                    continue
                cache.put(
                    benchmark.name, file_split, row_index, hashes[row_index], completion.text,
                    completion.finish_reason, completion.prompt_tokens, completion.completion_tokens,
                    completion.attempts, time.time(),
                )
                new_prompt_tokens += completion.prompt_tokens
                new_completion_tokens += completion.completion_tokens
                if bar is not None:
                    bar.update(1)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            if bar is not None:
                bar.close()
        everything = cache.lookup(benchmark.name, file_split, wanted)

    output_files: List[str] = []
    if len(everything) == len(rows):
        completions = [output_text(everything[i].completion) for i in range(len(rows))]
        paths = write_completion_files(out_dir, benchmark.name, file_split, completions, benchmark.rows_per_file)
        output_files = [str(p) for p in paths]
    report = _report(
        benchmark, file_split, client.model, rows, everything, len(cached), len(pending), failed, aborted,
        output_files, new_prompt_tokens, new_completion_tokens, time.monotonic() - started, source,
    )
    storage.write_text_atomically(runs_dir(out_dir) / f"{benchmark.name}_{file_split}_report.json",
                                  report.to_json() + "\n")
    return report


def _report(
    benchmark: TeacherBenchmark, file_split: str, model: str, rows: Sequence[dict],
    done: Dict[int, CachedCompletion], from_cache: int, requested_now: int, failed: Dict[int, str],
    aborted: bool, output_files: List[str], new_prompt_tokens: int, new_completion_tokens: int,
    wall_s: float, source: str,
) -> TeacherReport:
    statuses: collections.Counter = collections.Counter()
    golds: List[str] = []
    teacher_labels: List[str] = []
    for row_index, cached in sorted(done.items()):
        parsed = benchmark.parse(output_text(cached.completion))
        statuses[parsed.status] += 1
        gold = benchmark.gold_label(rows[row_index], f"{source} row {row_index}")
        if gold is not None:
            golds.append(gold)
            teacher_labels.append(parsed.label)
    return TeacherReport(
        benchmark=benchmark.name,
        split=file_split,
        model=model,
        rows_requested=len(rows),
        rows_done=len(done),
        rows_from_cache=from_cache,
        rows_requested_now=requested_now,
        failed_rows=dict(sorted(failed.items())),
        aborted=aborted,
        output_files=output_files,
        parse_status_counts=dict(sorted(statuses.items())),
        teacher_accuracy=benchmark.accuracy(golds, teacher_labels) if golds else None,
        rows_with_gold=len(golds),
        prompt_tokens_total=sum(c.prompt_tokens for c in done.values()),
        completion_tokens_total=sum(c.completion_tokens for c in done.values()),
        prompt_tokens_this_run=new_prompt_tokens,
        completion_tokens_this_run=new_completion_tokens,
        wall_s=round(wall_s, 3),
    )
