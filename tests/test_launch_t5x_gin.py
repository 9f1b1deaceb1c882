"""The upstream-T5X experiment files gin/t5x/*.gin: up to date, and every one parses under real T5X.

`tests/test_t5x_runs.py` runs the small cqa/svamp files with `t5x.train`, `t5x.eval` and
`t5x.infer`. What those runs cannot cover is here: all 48 files (every benchmark, size
and kind) parsed with T5X's own gin files and configurables, no stubs, checking the values
each must set, and that T5X's vocabulary equals the tasks' default one field by field
(T5X's `verify_matching_vocabs`), offline: the comparison reads no vocabulary file.
"""
import json
import os
import subprocess
import sys

from dss_launch import t5x_gin
from t5x_support import requires_t5x, t5x_gin_search_path

T5_VOCAB = ["gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model", 0]
EMB_DIM = {"small": 512, "base": 768, "large": 1024, "xxl": 4096}

# T5X's run files `import __main__ as train_script` (eval_script, infer_script): the
# functions the t5x.train/eval/infer binaries configure must be attributes of __main__.
PARSE_ALL = """
import json, sys
from t5x.train import train  # noqa: F401
from t5x.eval import evaluate  # noqa: F401
from t5x.infer import infer  # noqa: F401
import gin, seqio

search_path, gin_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
gin.add_config_file_search_path(search_path)
required = ["MODEL_DIR = '/m'", "CHECKPOINT_PATH = '/c'", "EVAL_OUTPUT_DIR = '/e'", "INFER_OUTPUT_DIR = '/i'"]
out = {}
for name in names:
    gin.clear_config()
    gin.parse_config_files_and_bindings([f"{gin_dir}/{name}"], required)
    q = gin.query_parameter
    vocab = gin.get_configurable(seqio.SentencePieceVocabulary)()
    mixture = seqio.get_mixture_or_task(q("%MIXTURE_OR_TASK_NAME"))
    tasks = getattr(mixture, "tasks", [mixture])
    record = {
        "mixture": mixture.name, "tasks": sorted(t.name for t in tasks),
        "vocab": [vocab.sentencepiece_model_file, vocab.extra_ids],
        "tasks_use_t5x_vocab": all(t.output_features[f].vocabulary == vocab for t in tasks for f in t.output_features),
        "lengths": q("%TASK_FEATURE_LENGTHS"), "dropout": q("%DROPOUT_RATE"),
        "num_partitions": q("partitioning.PjitPartitioner.num_partitions"), "emb_dim": q("network.T5Config.emb_dim"),
    }
    for key in ("%TRAIN_STEPS", "%INITIAL_CHECKPOINT_PATH", "%BATCH_SIZE", "%EVAL_PERIOD", "%USE_CACHED_TASKS",
                "%LOSS_NORMALIZING_FACTOR", "utils.DatasetConfig.split", "utils.DatasetConfig.batch_size"):
        try:
            record[key] = q(key)
        except ValueError:
            pass
    out[name] = record
print(json.dumps(out))
"""


def test_gin_t5x_files_are_what_the_generator_writes():
    assert t5x_gin.stale_files(t5x_gin.GIN_T5X_DIR) == []
    assert sorted(p.name for p in t5x_gin.GIN_T5X_DIR.glob("*.gin")) == sorted(t5x_gin.expected_files())


def test_generator_writes_train_eval_and_infer_files_for_every_benchmark_and_size():
    names = set(t5x_gin.expected_files())
    assert len(names) == 4 * 4 * 3
    for benchmark in t5x_gin.BENCHMARKS:
        for size in t5x_gin.NUM_PARTITIONS:
            assert {f"dss_{benchmark}_{size}{kind}.gin" for kind in ("", "_eval", "_infer")} <= names


@requires_t5x
def test_every_gin_t5x_file_parses_under_real_t5x_and_sets_the_dss_recipe(tmp_path):
    names = sorted(t5x_gin.expected_files())
    env = {k: v for k, v in os.environ.items() if k not in ("DSS_VOCAB", "DSS_T5_VOCAB_FILE")}  # the defaults
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", PARSE_ALL, t5x_gin_search_path(), str(t5x_gin.GIN_T5X_DIR),
                             *names], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(parsed) == names
    for benchmark in t5x_gin.BENCHMARKS:
        for size, partitions in t5x_gin.NUM_PARTITIONS.items():
            for kind in ("", "_eval", "_infer"):
                values = parsed[f"dss_{benchmark}_{size}{kind}.gin"]
                assert values["vocab"] == T5_VOCAB  # T5X's own t5_1_1 vocabulary, not overridden
                assert values["tasks_use_t5x_vocab"]
                assert values["lengths"] == {"inputs": 1024, "targets": 256}
                assert values["emb_dim"] == EMB_DIM[size]  # the size's model file was included
                assert values["num_partitions"] == partitions
            train = parsed[f"dss_{benchmark}_{size}.gin"]
            assert train["mixture"] == f"dss_{benchmark}_mix_gold_lambda1"
            assert train["tasks"] == sorted([f"dss_{benchmark}_label_gold", f"dss_{benchmark}_rationale"])
            assert train["%BATCH_SIZE"] == 64 and train["%USE_CACHED_TASKS"] is False
            assert train["%TRAIN_STEPS"] == 1_010_000 and train["%EVAL_PERIOD"] == 250
            assert train["%INITIAL_CHECKPOINT_PATH"] == \
                f"gs://t5-data/pretrained_models/t5x/t5_1_1_{size}/checkpoint_1000000"
            assert train["%LOSS_NORMALIZING_FACTOR"] == "AVERAGE_PER_SEQUENCE"
            assert train["dropout"] == 0.1
            for kind in ("_eval", "_infer"):
                values = parsed[f"dss_{benchmark}_{size}{kind}.gin"]
                assert values["tasks"] == [f"dss_{benchmark}_label_gold"]
                assert values["utils.DatasetConfig.split"] == "test" and values["dropout"] == 0.0
