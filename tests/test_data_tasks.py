"""SeqIO tasks and mixtures of dss_tasks: names, datasets, token ids, metrics."""
import numpy as np
import pytest
import seqio

import dss_tasks
from dss_jax.data import readers, vocab

PAIRED_LENGTHS = {"label_inputs": 128, "label_targets": 64, "rationale_inputs": 128, "rationale_targets": 128}
LENGTHS = {"inputs": 128, "targets": 128}
KIND_NAMES = [(kind, labels) for kind, labels in dss_tasks.TASK_KINDS]


@pytest.fixture
def spm8k(monkeypatch, bench_spm_model, dss_data_dir):
    monkeypatch.setenv("DSS_VOCAB", str(bench_spm_model))
    monkeypatch.setenv("DSS_DATA_DIR", str(dss_data_dir))
    return seqio.SentencePieceVocabulary(str(bench_spm_model))


@pytest.fixture
def embedded_vocab(monkeypatch):
    monkeypatch.delenv("DSS_VOCAB", raising=False)  # arith defaults to the embedded vocabulary
    return vocab.get_vocabulary(vocab.EMBEDDED_SETTING)


def _first(name, split, lengths=None):
    task = seqio.get_mixture_or_task(name)
    if lengths is None:
        lengths = PAIRED_LENGTHS if "label_inputs" in task.output_features else LENGTHS
    dataset = task.get_dataset(lengths, split=split, shuffle=False)
    return {k: v.numpy() for k, v in next(iter(dataset)).items()}


@pytest.mark.parametrize("benchmark", dss_tasks.BENCHMARKS)
def test_design_table_names_are_registered(benchmark):
    tasks, mixtures = seqio.TaskRegistry.names(), seqio.MixtureRegistry.names()
    for suffix in ["", "_frac12p5", "_frac25", "_frac50", "_frac75"]:
        for labels in ("gold", "teacher"):
            assert f"dss_{benchmark}_label_{labels}{suffix}" in tasks
            assert f"dss_{benchmark}_rationale_then_label_{labels}{suffix}" in tasks
            assert f"dss_{benchmark}_paired_{labels}{suffix}" in tasks
            for lam in ("1", "0p5", "2"):
                assert f"dss_{benchmark}_mix_{labels}_lambda{lam}{suffix}" in mixtures
        for kind in ("rationale", "standard_finetune", "standard_distill"):
            assert f"dss_{benchmark}_{kind}{suffix}" in tasks


def test_mixture_rates_are_one_to_lambda():
    mixture = seqio.get_mixture_or_task("dss_cqa_mix_teacher_lambda0p5")
    rates = {task.name: mixture.get_rate(task) for task in mixture.tasks}
    assert rates == {"dss_cqa_label_teacher": 1.0, "dss_cqa_rationale": 0.5}


def test_register_dss_registers_any_combination_and_is_idempotent():
    name = dss_tasks.register_dss("svamp", lam=0.25, labels="teacher", fraction=0.8, seed=3)
    assert name == "dss_svamp_mix_teacher_lambda0p25_frac80_seed3"
    assert dss_tasks.register_dss("svamp", lam=0.25, labels="teacher", fraction=0.8, seed=3) == name
    mixture = seqio.get_mixture_or_task(name)
    assert sorted(t.name for t in mixture.tasks) == [
        "dss_svamp_label_teacher_frac80_seed3", "dss_svamp_rationale_frac80_seed3"]


def test_register_dss_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown benchmark"):
        dss_tasks.register_dss("gsm8k")
    with pytest.raises(ValueError, match="labels"):
        dss_tasks.register_dss("cqa", labels="silver")
    with pytest.raises(ValueError, match="lambda"):
        dss_tasks.register_dss("cqa", lam=0)


@pytest.mark.parametrize("kind, labels", KIND_NAMES)
def test_every_arith_task_builds_train_and_test(embedded_vocab, kind, labels):
    name = dss_tasks.task_name("arith", kind, labels)
    for split in ("train", "test"):
        example = _first(name, split)
        assert example["example_id"].dtype == np.int32
        for feature in seqio.get_mixture_or_task(name).output_features:
            assert example[feature][-1] == embedded_vocab.eos_id
            assert example[feature].max() < embedded_vocab.vocab_size


@pytest.mark.parametrize("benchmark", ["cqa", "svamp"])
@pytest.mark.parametrize("kind, labels", KIND_NAMES)
def test_every_cqa_and_svamp_task_builds_train_and_test(spm8k, benchmark, kind, labels):
    name = dss_tasks.task_name(benchmark, kind, labels)
    for split in ("train", "test"):
        example = _first(name, split)
        for feature in seqio.get_mixture_or_task(name).output_features:
            assert example[feature][-1] == 1 and example[feature].max() < 8000


def test_fraction_variant_builds_fewer_training_examples(spm8k):
    dataset = seqio.get_mixture_or_task("dss_svamp_label_gold_frac25").get_dataset(LENGTHS, split="train", shuffle=False)
    assert sum(1 for _ in dataset) == 180  # 200 kept rows, 10 % to validation


def test_label_task_input_is_predict_prefix_and_target_is_gold_with_eos(spm8k):
    example = _first("dss_cqa_label_gold", "test")
    source = readers.load_split("cqa", "test").examples[0]
    assert example["inputs_pretokenized"].decode() == "predict: " + source.input
    assert example["inputs"].tolist() == spm8k.encode("predict: " + source.input) + [1]
    assert example["targets"].tolist() == spm8k.encode("wooded area") + [1]
    assert example["example_id"] == 0 and example["task_id"] == 0


def test_rationale_task_input_is_explain_prefix_and_target_is_teacher_rationale(spm8k):
    example = _first("dss_svamp_rationale", "test")
    source = readers.load_split("svamp", "test").examples[0]
    assert example["inputs"].tolist() == spm8k.encode("explain: " + source.input) + [1]
    assert example["targets"].tolist() == spm8k.encode(source.teacher_rationale) + [1]
    assert example["task_id"] == 1


def test_nli_input_token_ids_are_prefix_premise_eos_hypothesis_eos(spm8k):
    example = _first("dss_esnli_label_gold", "test")
    premise = "This church choir sings to the masses as they sing joyous songs from the book at a church."
    hypothesis = "The church has cracks in the ceiling."
    expected = spm8k.encode("predict: " + premise) + [1] + spm8k.encode(hypothesis) + [1]
    assert example["inputs"].tolist() == expected
    assert example["targets"].tolist() == spm8k.encode("neutral") + [1]


def test_standard_tasks_have_no_prefix(spm8k):
    finetune = _first("dss_svamp_standard_finetune", "test")
    distill = _first("dss_svamp_standard_distill", "test")
    source = readers.load_split("svamp", "test").examples[0]
    assert finetune["inputs"].tolist() == distill["inputs"].tolist() == spm8k.encode(source.input) + [1]
    assert finetune["targets_pretokenized"].decode() == "( 10.0 * 45.0 )"


def test_standard_distill_trains_on_the_teacher_label(spm8k):
    distill = _first("dss_svamp_standard_distill", "train")
    finetune = _first("dss_svamp_standard_finetune", "train")
    assert distill["example_id"] == finetune["example_id"] == 792
    assert distill["targets_pretokenized"].decode() == "((18 - 10) * 15)"
    assert finetune["targets_pretokenized"].decode() == "( ( 18.0 - 10.0 ) * 15.0 )"


def test_rationale_then_label_target_puts_label_after_rationale(spm8k):
    example = _first("dss_svamp_rationale_then_label_gold", "test")
    text = example["targets_pretokenized"].decode()
    assert text.endswith(". So the answer is ( 10.0 * 45.0 )")
    task = seqio.get_mixture_or_task("dss_svamp_rationale_then_label_gold")
    assert task.postprocess_fn(text, is_target=True) == "( 10.0 * 45.0 )"


def test_paired_task_holds_both_versions_of_one_example(spm8k):
    example = _first("dss_cqa_paired_teacher", "test")
    assert example["label_inputs_pretokenized"].decode().startswith("predict: A beaver")
    assert example["rationale_inputs_pretokenized"].decode().startswith("explain: A beaver")
    assert example["label_targets_pretokenized"].decode() == "wooded area"
    assert example["rationale_targets_pretokenized"].decode().startswith("The answer must be")


def test_task_without_data_registers_and_fails_only_when_built(spm8k, dss_data_dir):
    if (dss_data_dir / "esnli" / "esnli_train.json").exists():
        pytest.skip("this data dir has the full datasets.zip")
    task = seqio.get_mixture_or_task("dss_esnli_label_gold")
    with pytest.raises(readers.DataFileMissingError, match="esnli_train.json"):
        task.get_dataset(LENGTHS, split="train", shuffle=False)


def test_data_dir_is_resolved_when_the_dataset_is_built(spm8k, monkeypatch, tmp_path):
    monkeypatch.setenv("DSS_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(readers.DataFileMissingError, match="nowhere"):
        seqio.get_mixture_or_task("dss_svamp_label_gold").get_dataset(LENGTHS, split="test")


def test_set_data_dir_overrides_the_environment(spm8k, monkeypatch, dss_data_dir):
    monkeypatch.setenv("DSS_DATA_DIR", "/nonexistent")
    dss_tasks.set_data_dir(dss_data_dir)
    try:
        assert _first("dss_svamp_label_gold", "test")["example_id"] == 0
    finally:
        dss_tasks.set_data_dir(None)


def test_mixture_samples_rationales_at_rate_lambda_over_one_plus_lambda(embedded_vocab):
    mixture = seqio.get_mixture_or_task("dss_arith_mix_gold_lambda2")
    dataset = mixture.get_dataset({"inputs": 64, "targets": 64}, split="train", shuffle=True, seed=0,
                                  passthrough_features=["task_id", "example_id"])
    task_ids = [int(ex["task_id"]) for ex in dataset.take(600).as_numpy_iterator()]
    assert abs(np.mean(task_ids) - 2 / 3) < 0.07  # 600 draws: 3.5 standard errors


def test_task_metrics_score_hand_made_predictions():
    svamp = seqio.get_mixture_or_task("dss_svamp_label_gold")
    targets = ["( 84.0 / 2.0 )", "( 3.0 + 4.0 )", "( 1.0 - 1.0 )", "( 2.0 * 5.0 )"]
    predictions = ["(84 / 2)", "(3 * 4)", "__import__('os').system('true')", "10"]
    scores = {}
    for metric_fn in svamp.metric_fns:
        scores.update(metric_fn(targets, [svamp.postprocess_fn(p) for p in predictions]))
    assert scores == {"accuracy": 50.0}
    cqa = seqio.get_mixture_or_task("dss_cqa_label_teacher")
    assert cqa.metric_fns[0](["shelf", "table"], ["shelf", "(b) table"]) == {"accuracy": 50.0}


def test_vocabulary_follows_dss_vocab_when_used(monkeypatch, bench_spm_model):
    feature_vocab = seqio.get_mixture_or_task("dss_cqa_label_gold").output_features["targets"].vocabulary
    monkeypatch.setenv("DSS_VOCAB", str(bench_spm_model))
    assert feature_vocab.vocab_size == 8000
    assert feature_vocab == seqio.SentencePieceVocabulary(str(bench_spm_model))
    assert seqio.SentencePieceVocabulary(str(bench_spm_model)) == feature_vocab


def test_default_vocabulary_is_t5_1_1_s_without_loading_it(monkeypatch):
    """T5 1.1's arrangement: the 100extra file already holds the sentinels, so no extra ids (as T5X)."""
    monkeypatch.delenv("DSS_VOCAB", raising=False)
    monkeypatch.delenv(vocab.T5_VOCAB_FILE_ENV, raising=False)
    feature_vocab = seqio.get_mixture_or_task("dss_cqa_label_gold").output_features["targets"].vocabulary
    assert feature_vocab.resolved() == seqio.SentencePieceVocabulary(vocab.T5_VOCAB_PATH, extra_ids=0)


def test_gin_file_can_import_the_tasks():
    gin = pytest.importorskip("gin")
    gin.parse_config("from __gin__ import dynamic_registration\nimport dss_tasks")
    assert "dss_arith_mix_gold_lambda1" in seqio.MixtureRegistry.names()
