"""Run outputs on local disk or cloud storage: paths and the metrics log."""
import json
import os

from dss_jax import metrics_logging, storage


def test_local_run_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(storage.run_path("run1")) == os.fspath(tmp_path / "run1")
    assert not storage.is_remote("run1")


def test_bucket_urls_stay_urls():
    assert storage.is_remote("gs://bucket/dss/cqa_xxl")
    assert os.fspath(storage.run_path("gs://bucket/dss/cqa_xxl") / "checkpoints") == "gs://bucket/dss/cqa_xxl/checkpoints"


def _log_two_runs(model_dir):
    for start in (0, 2):  # a run, then its resumption appending to the same file
        logger = metrics_logging.MetricsLogger(model_dir, 4, start, tensorboard=False, progress_bar=False)
        logger.log_train(start + 1, {"loss": 1.5})
        logger.log_eval(start + 2, "dss_arith_label_gold", "test", {"accuracy": 50.0}, 10)
        logger.close()
    return [{k: v for k, v in r.items() if k != "time"} for r in metrics_logging.read_metrics(model_dir)]


def test_metrics_log_without_appends_keeps_every_record_across_a_resume(tmp_path, monkeypatch):
    appended = _log_two_runs(tmp_path / "local")
    monkeypatch.setattr(storage, "is_remote", lambda path: True)  # the cloud-storage code path
    rewritten = _log_two_runs(tmp_path / "bucket")
    assert len(appended) == 4
    assert rewritten == appended
    assert json.loads((tmp_path / "bucket" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4
