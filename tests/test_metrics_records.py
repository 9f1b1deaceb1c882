"""metrics.jsonl shows each step once, with the values of the run that survived (issue 17 item 4).

Whole runs (SIGKILL-like loss of the last checkpoint, SIGTERM stop and resume) are in
tests/test_run_dir.py; these are the record-level rules.
"""
import json

from dss_jax import metrics_logging


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_resume_drops_the_records_of_steps_after_the_restored_one_and_keeps_them_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"kind": "train", "step": s, "loss": float(s)} for s in (1, 2, 3, 4)]
    _write(path, records + [{"kind": "eval", "step": 4, "task": "t", "split": "validation", "accuracy": 1.0}])
    assert metrics_logging.drop_records_after(path, 2) == 3
    assert metrics_logging.read_metrics(path) == records[:2]
    aside = [json.loads(line) for line in (tmp_path / "metrics.jsonl.superseded").read_text().splitlines()]
    assert [r["step"] for r in aside] == [3, 4, 4]


def test_a_line_torn_by_a_kill_is_skipped_by_readers_and_removed_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [{"kind": "train", "step": 1, "loss": 1.0}], tail='{"kind": "train", "st')
    assert metrics_logging.read_metrics(path) == [{"kind": "train", "step": 1, "loss": 1.0}]
    assert metrics_logging.drop_records_after(path, 1) == 1
    assert path.read_text().endswith("}\n")


def test_readers_keep_the_last_record_of_each_kind_step_task_and_split(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = {"kind": "eval", "step": 4, "task": "t", "split": "test", "accuracy": 10.0}
    other_split = dict(first, split="validation")
    again = dict(first, accuracy=20.0)
    _write(path, [first, other_split, again])
    assert metrics_logging.read_metrics(path) == [again, other_split]


def test_a_logger_started_with_drop_after_rewrites_before_it_appends(tmp_path):
    _write(tmp_path / "metrics.jsonl", [{"kind": "train", "step": s} for s in (1, 2, 3)])
    logger = metrics_logging.MetricsLogger(tmp_path, 10, 1, tensorboard=False, progress_bar=False, drop_after=1)
    logger.log_train(2, {"loss": 0.5})
    logger.close()
    steps = [r["step"] for r in metrics_logging.read_metrics(tmp_path)]
    assert steps == [1, 2]


def test_a_meter_started_at_a_restored_step_averages_only_the_steps_after_it():
    meter = metrics_logging.StepMeter(13, lambda m: {"loss": m})
    for step, loss in ((14, 1.0), (15, 3.0)):
        meter.add(step, loss, examples=4, sequences=8)
    meter.check_finite("step 13")
    line = meter.line(15, learning_rate=0.1)
    assert line["first_step"] == 14 and line["loss"] == 2.0
    meter.add(16, 5.0, 4, 8)
    meter.check_finite("step 15")
    assert meter.line(16, 0.1)["first_step"] == 16
