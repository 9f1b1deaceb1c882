"""The embedded offline benchmark `arith` and the project-trained vocabulary."""
import collections
import json

import pytest

import sentencepiece as spm
import seqio

from dss_jax.data import arithmetic, embedded, metrics, readers, vocab
from dss_jax.data.__main__ import main

SMALL = embedded.ArithConfig(num_train=300, num_valid=40, num_test=40)


def test_generation_is_deterministic_for_a_config():
    assert embedded.generate(SMALL) == embedded.generate(SMALL)
    other = embedded.generate(embedded.ArithConfig(seed=1, num_train=300, num_valid=40, num_test=40))
    assert other != embedded.generate(SMALL)


def test_splits_have_disjoint_inputs():
    splits = embedded.generate(SMALL)
    inputs = [{p.input for p in problems} for problems in splits.values()]
    assert sum(len(s) for s in inputs) == len(set.union(*inputs)) == 380


def test_problems_are_short_with_svamp_style_gold_equations():
    for problem in embedded.generate(SMALL)["train"]:
        body, question = problem.input.split("\n")
        assert question.startswith("How many")
        assert problem.gold_equation.startswith("( ") and ".0 " in problem.gold_equation
        assert len(problem.input.split()) <= 30


def test_written_layout_is_read_by_the_same_readers(tmp_path):
    embedded.write_benchmark(tmp_path, SMALL)
    assert (tmp_path / "arith" / "llm" / "train_CoT_0.json").is_file()
    sizes = [len(readers.load_split("arith", split, tmp_path).examples) for split in readers.SPLITS]
    assert sizes == [300, 40, 40]


def test_teacher_is_mostly_right_with_configured_error_rate(tmp_path):
    config = embedded.ArithConfig(num_train=2000, num_valid=10, num_test=10, teacher_error_rate=0.2,
                                  teacher_parse_failure_rate=0.0)
    embedded.write_benchmark(tmp_path, config)
    examples = readers.load_split("arith", "train", tmp_path).examples
    accuracy = metrics.accuracy_fraction(
        "arith", [e.gold_label for e in examples], [e.teacher_label for e in examples]
    )
    assert 0.75 < accuracy < 0.85  # 1 - 0.2, within sampling error of 2000 draws
    assert all(e.parse_status == "ok" for e in examples)


def test_a_zero_error_teacher_is_always_right_and_its_rationale_computes_the_answer(tmp_path):
    config = embedded.ArithConfig(num_train=200, num_valid=10, num_test=10, teacher_error_rate=0.0,
                                  teacher_parse_failure_rate=0.0)
    embedded.write_benchmark(tmp_path, config)
    for example in readers.load_split("arith", "test", tmp_path).examples:
        assert metrics.accuracy_fraction("arith", [example.gold_label], [example.teacher_label]) == 1.0
        last_step = example.teacher_rationale.rsplit(" = ", 1)[1].rstrip(".")
        assert float(last_step) == pytest.approx(arithmetic.evaluate_equation(example.gold_label))


def test_parse_failures_are_generated_and_counted(tmp_path):
    config = embedded.ArithConfig(num_train=1000, num_valid=10, num_test=10, teacher_parse_failure_rate=0.05)
    embedded.write_benchmark(tmp_path, config)
    statuses = collections.Counter(e.parse_status for e in readers.load_split("arith", "train", tmp_path).examples)
    assert set(statuses) == {"ok", "no_answer_marker"}
    assert 20 <= statuses["no_answer_marker"] <= 85


def test_completions_run_on_into_the_next_question_like_palm(tmp_path):
    problem = embedded.generate(SMALL)["test"][0]
    assert "\n\nQ: " in problem.teacher_completion


def test_ensure_data_dir_writes_once_under_the_cache(tmp_path):
    first = embedded.ensure_data_dir(SMALL, cache=tmp_path)
    stamp = (first / "arith" / "arith_test.json").stat().st_mtime_ns
    again = embedded.ensure_data_dir(SMALL, cache=tmp_path)
    assert again == first and (first / "arith" / "arith_test.json").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "embedded"


def test_write_embedded_command(tmp_path, capsys):
    assert main(["write_embedded", "--data_dir", str(tmp_path)]) == 0
    rows = (tmp_path / "arith" / "arith_train.json").read_text().splitlines()
    assert len(rows) == embedded.ArithConfig().num_train
    assert set(json.loads(rows[0])) == {"input", "label"}


def test_vocabulary_training_is_deterministic_and_t5_shaped(tmp_path):
    lines = embedded.vocabulary_training_text(SMALL)
    first = vocab.train_sentencepiece(lines, tmp_path / "a.model", vocab_size=200)
    second = vocab.train_sentencepiece(lines, tmp_path / "b.model", vocab_size=200)
    assert first.read_bytes() == second.read_bytes()
    processor = spm.SentencePieceProcessor(model_file=str(first))
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (0, 1, 2, -1)
    assert processor.get_piece_size() == 200


def test_embedded_vocab_is_cached_and_encodes_arith_text_compactly(tmp_path, monkeypatch):
    monkeypatch.setenv("DSS_CACHE_DIR", str(tmp_path))
    path = vocab.embedded_vocab_path()
    assert path.parent == tmp_path / "vocab" and path.is_file()
    vocabulary = seqio.SentencePieceVocabulary(str(path))
    problem = embedded.generate(SMALL)["test"][0]
    assert len(vocabulary.encode("predict: " + problem.input)) <= 40
    assert len(vocabulary.encode(problem.gold_equation)) <= 16
    assert ".0" in vocabulary.tokenizer.encode(problem.gold_equation, out_type=str)
    assert vocabulary.decode(vocabulary.encode(problem.gold_equation)) == problem.gold_equation


def test_train_vocab_command_trains_a_model_from_text_files(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(embedded.vocabulary_training_text(SMALL)[:2000]))
    output = tmp_path / "mine.model"
    assert main(["train_vocab", "--input", str(corpus), "--output", str(output), "--vocab_size", "150"]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    vocabulary = seqio.SentencePieceVocabulary(str(output))
    assert vocabulary.eos_id == 1 and vocabulary.vocab_size <= 150
