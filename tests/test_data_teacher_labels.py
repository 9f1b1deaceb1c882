"""Teacher-label tasks train on the teacher's label but are scored against gold labels.

On the real rows of ../shared/dss_datasets: every teacher-label task's validation and
test targets are the gold labels; its training targets are the teacher's.
"""
import pytest
import seqio

import dss_tasks
from dss_jax.data import readers

TEACHER_KINDS = [("label", "teacher"), ("standard_distill", None), ("rationale_then_label", "teacher"),
                 ("paired", "teacher")]
REAL_BENCHMARKS = ["cqa", "svamp", "esnli", "anli1"]


@pytest.fixture
def real_data(monkeypatch, dss_data_dir, bench_spm_model):
    monkeypatch.setenv("DSS_DATA_DIR", str(dss_data_dir))
    monkeypatch.setenv("DSS_VOCAB", str(bench_spm_model))
    return dss_data_dir


def _label_targets(task_name, split):
    """(example_id, label-type target text) of every example, from the task's own source and
    text preprocessor (tokenisation does not change which label is the target)."""
    task = seqio.get_mixture_or_task(task_name)
    ds = task.preprocessors[0](task.source.get_dataset(split=split, shuffle=False))
    field = "label_targets_segments" if "paired" in task_name else "targets_segments"
    ds = ds.map(lambda ex: (ex["example_id"], ex[field][0])).batch(4096)
    out = []
    for ids, texts in ds.as_numpy_iterator():
        for example_id, text in zip(ids, texts):
            text = text.decode()
            if "_rationale_then_label_" in task_name:
                text = task.postprocess_fn(text, is_target=True)
            out.append((int(example_id), text))
    return out


def _gold(benchmark, split):
    return {e.example_id: e.gold_label for e in readers.load_split(benchmark, split).examples}


@pytest.mark.parametrize("benchmark", REAL_BENCHMARKS)
@pytest.mark.parametrize("split", ["validation", "test"])
def test_every_teacher_label_task_evaluates_against_gold_labels(real_data, benchmark, split):
    gold = _gold(benchmark, split)
    for kind, labels in TEACHER_KINDS:
        targets = _label_targets(dss_tasks.task_name(benchmark, kind, labels), split)
        assert len(targets) == len(gold)
        wrong = [(i, t, gold[i]) for i, t in targets if t != gold[i]]
        assert not wrong, f"{kind}: {len(wrong)} targets are not gold, e.g. {wrong[:3]}"


def test_teacher_label_tasks_train_on_the_teacher_label(real_data):
    teacher = {e.example_id: e.teacher_label for e in readers.load_split("cqa", "train").examples}
    for kind, labels in TEACHER_KINDS:
        targets = _label_targets(dss_tasks.task_name("cqa", kind, labels), "train")
        # the ablation's single target strips its label (a failed parse's " " becomes "")
        assert [t.strip() for _, t in targets] == [teacher[i].strip() for i, _ in targets]


def test_mix_teacher_label_task_is_scored_against_gold_on_tokenised_test_targets(real_data):
    mixture = seqio.get_mixture_or_task("dss_svamp_mix_teacher_lambda1")
    label_task = [t for t in mixture.tasks if not t.name.endswith("_rationale")]
    assert [t.name for t in label_task] == ["dss_svamp_label_teacher"]
    ds = label_task[0].get_dataset({"inputs": 256, "targets": 64}, split="test", shuffle=False)
    gold = _gold("svamp", "test")
    texts = {int(ex["example_id"]): ex["targets_pretokenized"].decode() for ex in ds.as_numpy_iterator()}
    assert texts == gold
