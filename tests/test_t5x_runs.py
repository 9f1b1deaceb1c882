"""The project's gin/t5x files under real upstream T5X: t5x.train, t5x.eval, t5x.infer (no stubs).

A tiny T5 1.1 network (gin overrides of T5X's `network.T5Config`) trains a few steps on
the cqa and svamp mixtures of `gin/t5x/dss_{cqa,svamp}_small.gin`; T5X's eval and infer
then read those checkpoints with the `_eval`/`_infer` files, and `t5x.eval` restores a
dss_jax run exported with `python -m dss_jax.export`.

Vocabulary: the tasks keep the project's default setting (`t5`: T5 1.1's 100extra file
with no extra ids) and T5X keeps its own (that file, seqio's default extra_ids=0); only
the file's location is pointed at a local copy built the same way (a SentencePiece model
plus 100 sentinels), because these machines cannot reach gs://t5-data. T5X refuses to
train when the two vocabularies differ in any field (`verify_matching_vocabs`).

Sizes are T5X's minimum for a meaningful run on 2 cores: about 30 s per command.
"""
import json
import math
import pathlib

import numpy as np
import pytest

from t5x_support import built_once, requires_t5x, run_module, t5x_gin_search_path
from vocab_support import add_sentinels

pytestmark = requires_t5x

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin" / "t5x"
TRAIN_STEPS = 8
EVAL_PERIOD = 4
LENGTHS = "{'inputs': 64, 'targets': 32}"
# The tiny network in T5X's terms and dss_jax's.
NETWORK = dict(vocab_size=8192, emb_dim=64, num_heads=2, head_dim=32, mlp_dim=128, num_encoder_layers=1,
               num_decoder_layers=1, dtype="float32")
DSS_NETWORK = dict(vocab_size=8192, d_model=64, num_heads=2, d_kv=32, d_ff=128, num_encoder_layers=1,
                   num_decoder_layers=1)


@pytest.fixture(scope="module")
def local_t5_vocab(bench_spm_model, tmp_path_factory) -> pathlib.Path:
    """A local SentencePiece model in the layout of cc_all.32000.100extra (pieces + 100 sentinels)."""
    def build(directory):
        directory.mkdir(parents=True, exist_ok=True)
        add_sentinels(bench_spm_model, directory / "sentencepiece.model")

    return built_once(tmp_path_factory, "t5x_vocab", build) / "sentencepiece.model"


@pytest.fixture(scope="module")
def env(local_t5_vocab, dss_data_dir):
    # DSS_VOCAB unset: the tasks use the project's default (`t5`) setting.
    return {"DSS_DATA_DIR": str(dss_data_dir), "DSS_T5_VOCAB_FILE": str(local_t5_vocab), "DSS_VOCAB": ""}


def _common_flags(local_t5_vocab) -> list[str]:
    return ([f"--gin_search_paths={t5x_gin_search_path()}",
             f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{local_t5_vocab}'",
             f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}"]
            + [f"--gin.network.T5Config.{name}={value!r}" for name, value in NETWORK.items()])


def _train(benchmark, model_dir, local_t5_vocab, env):
    """t5x.train of the benchmark's small file with a tiny network, from scratch."""
    run_module("t5x.train", [
        f"--gin_file={GIN_DIR / f'dss_{benchmark}_small.gin'}", *_common_flags(local_t5_vocab),
        f"--gin.MODEL_DIR='{model_dir}'", "--gin.INITIAL_CHECKPOINT_PATH=None",
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}", "--gin.BATCH_SIZE=8", f"--gin.EVAL_PERIOD={EVAL_PERIOD}",
        "--gin.EVAL_STEPS=1", "--gin.EVALUATOR_NUM_EXAMPLES=4", "--gin.DROPOUT_RATE=0.0",
        f"--gin.infer_eval/utils.DatasetConfig.task_feature_lengths={LENGTHS}",
        f"--gin.utils.SaveCheckpointConfig.period={EVAL_PERIOD}",
        "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.05",
        "--gin.__main__.train.run_eval_before_training=True"], env)


@pytest.fixture(scope="module")
def cqa_run(tmp_path_factory, local_t5_vocab, env):
    return built_once(tmp_path_factory, "t5x_cqa_run", lambda d: _train("cqa", d, local_t5_vocab, env))


@pytest.fixture(scope="module")
def svamp_run(tmp_path_factory, local_t5_vocab, env):
    return built_once(tmp_path_factory, "t5x_svamp_run", lambda d: _train("svamp", d, local_t5_vocab, env))


def _scalars(event_dir: pathlib.Path, tag: str) -> dict[int, float]:
    """{step: value} of one scalar in a TensorBoard event folder."""
    import tensorflow as tf

    values = {}
    for file in sorted(event_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(file)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.parametrize("benchmark", ["cqa", "svamp"])
def test_training_eval_loss_of_each_task_is_finite_and_falls(benchmark, request):
    model_dir = request.getfixturevalue(f"{benchmark}_run")
    for task in (f"dss_{benchmark}_label_gold", f"dss_{benchmark}_rationale"):
        losses = _scalars(model_dir / "training_eval" / task, "loss")
        assert sorted(losses) == [0, EVAL_PERIOD, TRAIN_STEPS], f"{task}: {losses}"
        assert all(math.isfinite(v) for v in losses.values()), f"{task}: {losses}"
        assert losses[TRAIN_STEPS] < losses[0], f"{task}: {losses}"


@pytest.mark.parametrize("benchmark", ["cqa", "svamp"])
def test_training_writes_finite_train_losses_and_checkpoints(benchmark, request):
    model_dir = request.getfixturevalue(f"{benchmark}_run")
    losses = _scalars(model_dir / "train", "loss")
    assert sorted(losses) == [EVAL_PERIOD, TRAIN_STEPS] and all(math.isfinite(v) for v in losses.values())
    assert losses[TRAIN_STEPS] < losses[EVAL_PERIOD], losses
    assert (model_dir / f"checkpoint_{TRAIN_STEPS}" / "state").is_dir()


def test_in_training_inference_eval_uses_the_label_tasks_metric(cqa_run):
    records = [json.loads(line) for line in
               (cqa_run / "inference_eval" / "dss_cqa_label_gold-metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, EVAL_PERIOD, TRAIN_STEPS]
    assert all(0.0 <= r["accuracy"] <= 100.0 for r in records)


def test_t5x_training_checkpoint_loads_into_dss_jax(cqa_run):
    import dss_jax
    from dss_jax import initial_params
    from dss_jax.model import abstract_params

    config = dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0, **DSS_NETWORK)
    params = initial_params.load_initial_params(str(cqa_run), abstract_params(config), config)
    assert np.isfinite(np.asarray(params["decoder"]["logits_dense"]["kernel"])).all()


def _t5x_cqa_eval_records(checkpoint: pathlib.Path, out: pathlib.Path, local_t5_vocab, env) -> list[dict]:
    """python -m t5x.eval of `checkpoint` on 8 cqa gold test examples: its metrics records."""
    run_module("t5x.eval", [
        f"--gin_file={GIN_DIR / 'dss_cqa_small_eval.gin'}", *_common_flags(local_t5_vocab),
        f"--gin.CHECKPOINT_PATH='{checkpoint}'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
        "--gin.seqio.Evaluator.num_examples=8", "--gin.utils.DatasetConfig.batch_size=8"], env)
    return [json.loads(line) for line in
            (out / "inference_eval" / "dss_cqa_label_gold-metrics.jsonl").read_text().splitlines()]


def test_t5x_eval_scores_the_trained_checkpoint_on_gold_test_labels(cqa_run, tmp_path, local_t5_vocab, env):
    records = _t5x_cqa_eval_records(cqa_run / f"checkpoint_{TRAIN_STEPS}", tmp_path / "eval", local_t5_vocab, env)
    assert [r["step"] for r in records] == [TRAIN_STEPS] and "accuracy" in records[0]


def test_t5x_infer_predicts_every_test_example(svamp_run, tmp_path, local_t5_vocab, env, dss_data_dir):
    out = tmp_path / "infer"
    run_module("t5x.infer", [
        f"--gin_file={GIN_DIR / 'dss_svamp_small_infer.gin'}", *_common_flags(local_t5_vocab),
        f"--gin.CHECKPOINT_PATH='{svamp_run / f'checkpoint_{TRAIN_STEPS}'}'", f"--gin.INFER_OUTPUT_DIR='{out}'",
        "--gin.utils.DatasetConfig.batch_size=64"], env)
    rows = [json.loads(line) for line in
            (out / "dss_svamp_label_gold-predict.jsonl-00000-of-00001").read_text().splitlines()]
    from dss_jax.data import readers

    expected = len(readers.read_rows(dss_data_dir, "svamp", "test"))
    assert len(rows) == expected
    assert all("prediction" in r and r["inputs"]["inputs_pretokenized"].startswith("predict: ") for r in rows)


EXPORTED_STEP = 7


def _export_a_dss_jax_run(directory: pathlib.Path, env) -> None:
    """A dss_jax run directory (experiment record + one checkpoint), exported with python -m dss_jax.export."""
    import dss_jax
    from dss_jax import checkpoints, experiment, run_dir
    from dss_jax.model import init_params

    config = dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0, **DSS_NETWORK)
    run = run_dir.RunDir(directory / "dss_run")
    run.record(experiment.Experiment(model=config, initial_checkpoint="random", benchmark="cqa"),
               experiment.RunConfig())
    manager = checkpoints.CheckpointManager(run.checkpoints, save_every=1, async_save=False)
    manager.save(EXPORTED_STEP, {"params": init_params(config, rng=1), "step": EXPORTED_STEP},
                 {"batches": EXPORTED_STEP})
    manager.close()
    result = run_module("dss_jax.export", [f"--model_dir={run.path}", f"--output={directory / 't5x'}"], env)
    (directory / "export.json").write_text(result.stdout.splitlines()[0])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, env) -> pathlib.Path:
    """The T5X step directory python -m dss_jax.export wrote for a dss_jax run."""
    directory = built_once(tmp_path_factory, "dss_jax_exported", lambda d: _export_a_dss_jax_run(d, env))
    return pathlib.Path(json.loads((directory / "export.json").read_text())["t5x_checkpoint"])


def test_export_writes_the_runs_step_as_a_t5x_step_directory(exported):
    assert exported.name == f"checkpoint_{EXPORTED_STEP}" and (exported / "checkpoint").is_file()


def test_exported_dss_jax_run_is_restored_by_t5x_eval(exported, tmp_path, local_t5_vocab, env):
    records = _t5x_cqa_eval_records(exported, tmp_path / "eval", local_t5_vocab, env)
    assert [r["step"] for r in records] == [EXPORTED_STEP]


def test_t5x_train_continues_from_an_exported_dss_jax_run(exported, tmp_path, local_t5_vocab, env):
    """T5X restores the exported train state strictly (parameters and Adafactor slots)."""
    model_dir = tmp_path / "continued"
    run_module("t5x.train", [
        f"--gin_file={GIN_DIR / 'dss_cqa_small.gin'}", *_common_flags(local_t5_vocab),
        f"--gin.MODEL_DIR='{model_dir}'", f"--gin.INITIAL_CHECKPOINT_PATH='{exported}'",
        f"--gin.TRAIN_STEPS={EXPORTED_STEP + 2}", "--gin.BATCH_SIZE=4",
        "--gin.__main__.train.train_eval_dataset_cfg=None", "--gin.__main__.train.infer_eval_dataset_cfg=None"], env)
    losses = _scalars(model_dir / "train", "loss")
    assert list(losses) == [EXPORTED_STEP + 2] and math.isfinite(losses[EXPORTED_STEP + 2])
