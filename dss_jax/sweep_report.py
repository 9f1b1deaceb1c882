"""The report of a sweep directory: results.csv / .json / .md and the paper's figures (matplotlib).

``write_report(SWEEP_DIR)`` reads only the sweep directory (``dss_jax.sweeps`` layout):

* ``gather_rows``: one row per finished cell (``CSV_COLUMNS``): method, label source,
  fraction, model and its parameter count, lambda, seed, final test accuracy, the last
  validation accuracy and its step, steps, wall time, from each cell's ``experiment.json``,
  ``metrics.jsonl`` and ``cell.json`` and the sweep's journal;
* ``summarize``: mean and sample standard deviation over seeds, with n;
* ``markdown_table``: model x method rows, one column per training fraction;
* figures: accuracy against the training-set fraction, one line per method (the paper's
  Figures 2-3), and, when the sweep has several model sizes, against the parameter count
  (Figures 5-6), each with the teacher's test accuracy (``dss_jax.data.stats``) as a
  dashed line.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import statistics
import sys
from typing import Any, Callable, Mapping, Sequence

from dss_jax import storage
from dss_jax.sweeps import (BASELINE_LABELS, CELL_FILE, FIGURES_SUBDIR, METHODS, METHODS_WITH_LABELS, STEP_BY_STEP,
                            SweepDir, SweepError, durations, final_evals, read_metrics, read_run_record)

CSV_COLUMNS = ("cell", "method", "labels", "fraction", "model", "params", "lam", "seed", "test_accuracy",
               "validation_accuracy", "validation_step", "steps", "wall_time_s", "eval_task", "model_dir")



def gather_rows(sweep_dir) -> list[dict]:
    """One row per finished cell of the sweep directory (see ``CSV_COLUMNS``)."""
    directory = SweepDir(sweep_dir)
    if not directory.path.exists():
        raise SweepError(f"sweep directory {sweep_dir} does not exist")
    seconds = {name: sum(d) for name, d in durations(directory.events()).items()}
    rows = []
    for cell_dir in directory.cell_dirs():
        row = cell_row(cell_dir, seconds.get(cell_dir.name))
        if row is not None:
            rows.append(row)
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["params"] or 0, r["model"], order.get(r["method"], 99), r["labels"],
                                       r["lam"] or 0, r["fraction"], r["seed"]))


def cell_row(cell_dir, wall_time_s: float | None = None) -> dict | None:
    """The results of one cell directory; None when it has not finished."""
    record, metrics = read_run_record(cell_dir), read_metrics(cell_dir)
    finals = final_evals(record, metrics)
    if not finals:
        return None
    cell_file = storage.run_path(cell_dir) / CELL_FILE
    cell = json.loads(cell_file.read_text()) if cell_file.exists() else {}
    experiment = record["experiment"]
    method = experiment["method"]
    labels = experiment["labels"] if method in METHODS_WITH_LABELS else BASELINE_LABELS.get(method, "")
    validation = [m for m in metrics if m.get("kind") == "eval" and m.get("split") == "validation"]
    last_validation = [m for m in validation if m["step"] == max(v["step"] for v in validation)] if validation else []
    return {
        "cell": storage.run_path(cell_dir).name,
        "method": method,
        "labels": labels,
        "fraction": float(experiment["fraction"]),
        "model": cell.get("model", "model"),
        "params": model_params(experiment["model"]),
        "lam": float(experiment["lam"]) if method == STEP_BY_STEP else None,
        "seed": int(experiment["seed"]),
        "test_accuracy": _mean_accuracy(finals),
        "validation_accuracy": _mean_accuracy(last_validation) if last_validation else None,
        "validation_step": last_validation[0]["step"] if last_validation else None,
        "steps": int(finals[0]["step"]),
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 1),
        "eval_task": ",".join(m.get("task", "") for m in finals),
        "model_dir": str(cell_dir),
    }


def _mean_accuracy(records: Sequence[Mapping[str, Any]]) -> float | None:
    values = [float(r["accuracy"]) for r in records if isinstance(r.get("accuracy"), (int, float))]
    return statistics.fmean(values) if values else None


def model_params(model: Mapping[str, Any]) -> int | None:
    """Parameter count of a recorded T5Config (abstract shapes only); None if it cannot be built."""
    return _count_params(json.dumps(dict(model), sort_keys=True))


@functools.lru_cache(maxsize=None)
def _count_params(model_json: str) -> int | None:
    from dss_jax import configs

    try:
        return configs.count_params(configs.T5Config(**json.loads(model_json)))
    except Exception:  # noqa: BLE001 -- a record from another version: the size column stays empty
        return None


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one group's accuracies over seeds."""

    model: str
    method: str
    labels: str
    lam: float | None
    fraction: float
    params: int | None
    n: int
    mean: float
    std: float | None  # None for n = 1

    @property
    def label(self) -> str:
        return method_label(self.method, self.labels, self.lam)


def method_label(method: str, labels: str, lam: float | None, with_lam: bool = False) -> str:
    names = {"step_by_step": "step-by-step", "standard_finetune": "standard finetuning",
             "standard_distill": "standard distillation", "rationale_then_label": "rationale-then-label"}
    text = names.get(method, method)
    if method in METHODS_WITH_LABELS:
        text += f" ({labels} labels" + (f", λ={lam:g})" if with_lam and lam is not None else ")")
    return text


def summarize(rows: Sequence[Mapping[str, Any]], key: str = "test_accuracy") -> list[Summary]:
    """Mean ± std over seeds per (model, method, labels, lambda, fraction)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get(key) is None:
            continue
        groups.setdefault((row["model"], row["method"], row["labels"], row["lam"], row["fraction"]), []).append(row)
    out = []
    for (model, method, labels, lam, fraction), members in groups.items():
        values = [float(r[key]) for r in members]
        out.append(Summary(model, method, labels, lam, fraction, members[0].get("params"), len(values),
                           statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(out, key=lambda s: (s.params or 0, s.model, order.get(s.method, 99), s.labels, s.lam or 0,
                                      s.fraction))


def format_mean_std(summary: Summary) -> str:
    spread = f" ± {summary.std:.1f}" if summary.std is not None else ""
    return f"{summary.mean:.1f}{spread} (n={summary.n})"


def markdown_table(summaries: Sequence[Summary], teacher_accuracy: float | None = None,
                   title: str = "test accuracy (%)") -> str:
    """Rows: model x method (x lambda); columns: training fractions; cells: mean ± std (n)."""
    fractions = sorted({s.fraction for s in summaries})
    several_lams = len({s.lam for s in summaries if s.lam is not None}) > 1
    rows: dict[tuple, dict[float, Summary]] = {}
    for s in summaries:
        rows.setdefault((s.model, method_label(s.method, s.labels, s.lam, several_lams)), {})[s.fraction] = s
    header = ["model", "method"] + [f"{100 * f:g} % of train" for f in fractions]
    lines = [f"**{title}**, mean ± standard deviation over seeds (n = number of seeds)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (model, label), by_fraction in rows.items():
        cells = [format_mean_std(by_fraction[f]) if f in by_fraction else "" for f in fractions]
        lines.append("| " + " | ".join([model, label] + cells) + " |")
    if teacher_accuracy is not None:
        lines += ["", f"Teacher (its labels against the gold labels, from `python -m dss_jax.data stats`): "
                  f"{teacher_accuracy:.1f} % on test"]
    return "\n".join(lines) + "\n"


def teacher_test_accuracy(benchmark: str, llm: str = "palm") -> float | None:
    """The teacher's test accuracy in percent, from ``dss_jax.data.stats`` (None when the data is absent)."""
    import inspect

    from dss_jax.data import embedded, stats

    try:
        data_dir = str(embedded.ensure_data_dir()) if benchmark == embedded.BENCHMARK else None
        kwargs = {"llm": llm} if "llm" in inspect.signature(stats.benchmark_stats).parameters else {}
        result = stats.benchmark_stats(benchmark, data_dir, **kwargs)
    except Exception as err:  # noqa: BLE001 -- the figure goes without the line, and says why
        print(f"[report] no teacher accuracy for {benchmark}: {err}", file=sys.stderr)
        return None
    test = result.get("test", {})
    return None if "teacher_accuracy" not in test else 100.0 * float(test["teacher_accuracy"])


def plot_accuracy_vs_fraction(summaries: Sequence[Summary], model: str, path, teacher_accuracy: float | None,
                              title: str) -> None:
    """Paper Figures 2-3: accuracy against the training-set fraction, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [s for s in summaries if s.model == model]
    several_lams = len({s.lam for s in mine if s.lam is not None}) > 1
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for label, points in _lines(mine, several_lams).items():
        xs = [100 * p.fraction for p in points]
        ax.errorbar(xs, [p.mean for p in points], yerr=[p.std or 0.0 for p in points], marker="o", capsize=3,
                    label=f"{label} (n={min(p.n for p in points)})")
    if teacher_accuracy is not None:
        ax.axhline(teacher_accuracy, color="gray", linestyle="--", label=f"teacher ({teacher_accuracy:.1f} %)")
    fractions = sorted({100 * s.fraction for s in mine})
    ax.set_xscale("log", base=2)
    ax.set_xticks(fractions)
    ax.set_xticklabels([f"{f:g}" for f in fractions])
    ax.set_xlabel("training examples used (%)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    _finish(ax, fig)
    _save(fig, path)


def plot_accuracy_vs_model_size(summaries: Sequence[Summary], fraction: float, path,
                                teacher_accuracy: float | None, title: str) -> None:
    """Paper Figures 5-6: accuracy against the model's parameter count, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [s for s in summaries if s.fraction == fraction and s.params]
    several_lams = len({s.lam for s in mine if s.lam is not None}) > 1
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for label, points in _lines(mine, several_lams, x=lambda s: s.params).items():
        ax.errorbar([p.params for p in points], [p.mean for p in points], yerr=[p.std or 0.0 for p in points],
                    marker="o", capsize=3, label=label)
    if teacher_accuracy is not None:
        ax.axhline(teacher_accuracy, color="gray", linestyle="--", label=f"teacher ({teacher_accuracy:.1f} %)")
    sizes = sorted({s.params for s in mine})
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([f"{s.model}\n{_human_params(s.params)}" for s in
                        sorted({s.params: s for s in mine}.values(), key=lambda s: s.params)], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("model (parameters)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    _finish(ax, fig)
    _save(fig, path)


def _finish(ax, fig) -> None:
    """Accuracy from 0 to 100 %, a light grid, the legend under the axes."""
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)
    fig.tight_layout()


def _lines(summaries: Sequence[Summary], several_lams: bool, x=lambda s: s.fraction) -> dict[str, list[Summary]]:
    lines: dict[str, list[Summary]] = {}
    for s in summaries:
        lines.setdefault(method_label(s.method, s.labels, s.lam, several_lams), []).append(s)
    return {k: sorted(v, key=x) for k, v in lines.items()}


def _human_params(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _save(fig, path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    storage.run_path(path).write_bytes(buffer.getvalue())


def write_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})
    return out.getvalue()


def write_report(sweep_dir, benchmark: str | None = None, say: Callable[[str], None] = print) -> dict:
    """results.csv / .json / .md and the figures of every finished cell; returns what was written."""
    directory = SweepDir(sweep_dir)
    rows = gather_rows(sweep_dir)
    if not rows:
        raise SweepError(f"{sweep_dir} has no finished cell yet (run: python -m dss_jax.sweep run ...)")
    records = [read_run_record(r["model_dir"])["experiment"] for r in rows]
    benchmarks = sorted({r["benchmark"] for r in records if not r.get("task")})
    llms = sorted({r.get("llm", "palm") for r in records})
    benchmark = benchmark or (benchmarks[0] if len(benchmarks) == 1 else None)
    teacher = teacher_test_accuracy(benchmark, llms[0] if len(llms) == 1 else "palm") if benchmark else None
    summaries = summarize(rows)
    written = {}
    (directory.path / "results.csv").write_text(write_csv(rows))
    (directory.path / "results.json").write_text(json.dumps({"rows": rows, "teacher_test_accuracy": teacher,
                                                            "benchmark": benchmark}, indent=1) + "\n")
    title = f"{benchmark or 'sweep'}: test accuracy (%)"
    table = markdown_table(summaries, teacher, title=title)
    validation = summarize(rows, "validation_accuracy")
    if validation:
        table += "\n" + markdown_table(validation, None, title=f"{benchmark or 'sweep'}: validation accuracy (%) "
                                                                "at the last validation evaluation")
    (directory.path / "results.md").write_text(table)
    written.update(csv=str(directory.path / "results.csv"), json=str(directory.path / "results.json"),
                   markdown=str(directory.path / "results.md"), figures=[])
    figures = directory.path / FIGURES_SUBDIR
    figures.mkdir(parents=True, exist_ok=True)
    models = list(dict.fromkeys(s.model for s in summaries))
    for model in models:
        path = figures / f"accuracy_vs_fraction_{model}.png"
        plot_accuracy_vs_fraction(summaries, model, path, teacher, f"{benchmark or 'sweep'}, {model}: "
                                  "accuracy vs training-set size")
        written["figures"].append(str(path))
    sizes = {s.params for s in summaries if s.params}
    if len(sizes) > 1:
        for fraction in sorted({s.fraction for s in summaries}):
            path = figures / f"accuracy_vs_model_size_frac{fraction:g}.png"
            plot_accuracy_vs_model_size(summaries, fraction, path, teacher,
                                        f"{benchmark or 'sweep'}, {100 * fraction:g} % of train: accuracy vs model size")
            written["figures"].append(str(path))
    else:
        say("[report] one model size: no accuracy-vs-model-size figure (list several Sweep.models for it)")
    say(table)
    say(f"[report] {len(rows)} finished cells; wrote {written['csv']}, {written['json']}, {written['markdown']}, "
        + ", ".join(written["figures"]))
    return written

