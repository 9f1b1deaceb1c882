"""The upstream-T5X experiment files gin/t5x/*.gin: up to date, and they parse.

The parse test is a SYNTAX AND WIRING CHECK, NOT A RUN: T5X is not on PyPI and cannot be
installed here, so the test writes a stub ``t5x`` package (the configurables the files
touch, under T5X's module and parameter names) and stub copies of T5X's
``t5x/configs/runs/finetune.gin`` and ``t5x/examples/t5/t5_1_1/{size}.gin`` to
``tmp_path``.  It then parses every file with gin (the real ``dss_tasks`` import
included) and checks the values the files must set.
"""
import json
import os
import subprocess
import sys
import textwrap

from dss_launch import t5x_gin

STUB_MODULES = {
    "t5x/__init__.py": "",
    "t5x/partitioning.py": """
        class PjitPartitioner:
            def __init__(self, num_partitions=None, model_parallel_submesh=None, logical_axis_rules=None):
                self.num_partitions = num_partitions
        def standard_logical_axis_rules():
            return ()
    """,
    "t5x/utils.py": """
        class DatasetConfig:
            def __init__(self, mixture_or_task_name, task_feature_lengths, split, batch_size, shuffle, seed,
                         use_cached=False, pack=False, module=None):
                self.__dict__.update(locals())
        class CheckpointConfig:
            def __init__(self, restore=None, save=None):
                self.restore, self.save = restore, save
        class RestoreCheckpointConfig:
            def __init__(self, path, mode='latest', dtype='float32'):
                self.path = path
        class SaveCheckpointConfig:
            def __init__(self, period=None, dtype='float32', keep=None, save_dataset=False):
                self.period = period
        def create_learning_rate_scheduler(factors='constant', base_learning_rate=0.5, warmup_steps=1000):
            return (factors, base_learning_rate, warmup_steps)
    """,
    "t5x/trainer.py": """
        class Trainer:
            def __init__(self, num_microbatches=None, learning_rate_fn=None):
                self.learning_rate_fn = learning_rate_fn
    """,
    "t5x/adafactor.py": """
        class Adafactor:
            def __init__(self, decay_rate=0.8, step_offset=0, logical_factor_rules=None):
                self.decay_rate = decay_rate
        def standard_logical_factor_rules():
            return {}
    """,
    "t5x/models.py": """
        class EncoderDecoderModel:
            def __init__(self, module, input_vocabulary, output_vocabulary, optimizer_def, z_loss=0.0,
                         label_smoothing=0.0, loss_normalizing_factor=None):
                self.module, self.optimizer_def = module, optimizer_def
                self.loss_normalizing_factor = loss_normalizing_factor
    """,
    "t5x/examples/__init__.py": "",
    "t5x/examples/t5/__init__.py": "",
    "t5x/examples/t5/network.py": """
        class T5Config:
            def __init__(self, **fields):
                self.__dict__.update(fields)
        class Transformer:
            def __init__(self, config):
                self.config = config
    """,
}

# Stub copies of T5X's run and model files: the same macros and bindings, minus the
# `import __main__ as train_script` block (the T5X train binary is not here).
STUB_FINETUNE_GIN = """
    from __gin__ import dynamic_registration
    from t5x import partitioning
    from t5x import utils
    from t5x import trainer

    MODEL_DIR = %gin.REQUIRED
    MIXTURE_OR_TASK_NAME = %gin.REQUIRED
    TASK_FEATURE_LENGTHS = %gin.REQUIRED
    TRAIN_STEPS = %gin.REQUIRED
    INITIAL_CHECKPOINT_PATH = %gin.REQUIRED
    DROPOUT_RATE = 0.1
    USE_CACHED_TASKS = True
    BATCH_SIZE = 128
    EVAL_STEPS = 20
    EVAL_PERIOD = 1000
    MIXTURE_OR_TASK_MODULE = None

    partitioning.PjitPartitioner:
      num_partitions = 1
      model_parallel_submesh = None
      logical_axis_rules = @partitioning.standard_logical_axis_rules()

    train/utils.DatasetConfig:
      mixture_or_task_name = %MIXTURE_OR_TASK_NAME
      task_feature_lengths = %TASK_FEATURE_LENGTHS
      split = 'train'
      batch_size = %BATCH_SIZE
      shuffle = True
      seed = None
      use_cached = %USE_CACHED_TASKS
      pack = True
      module = %MIXTURE_OR_TASK_MODULE

    utils.CheckpointConfig:
      restore = @utils.RestoreCheckpointConfig()
      save = @utils.SaveCheckpointConfig()
    utils.RestoreCheckpointConfig:
      path = %INITIAL_CHECKPOINT_PATH
      mode = 'specific'
      dtype = 'float32'
    utils.SaveCheckpointConfig:
      period = 5000
    trainer.Trainer:
      num_microbatches = None
      learning_rate_fn = @utils.create_learning_rate_scheduler()
    utils.create_learning_rate_scheduler:
      factors = 'constant'
      base_learning_rate = 0.001
      warmup_steps = 1000
"""

STUB_BASE_GIN = """
    from __gin__ import dynamic_registration
    from t5x import adafactor
    from t5x import models
    from t5x.examples.t5 import network

    Z_LOSS = 0.0001
    LABEL_SMOOTHING = 0.0
    LOSS_NORMALIZING_FACTOR = None
    DROPOUT_RATE = %gin.REQUIRED
    VOCABULARY = 'stub-vocabulary'

    OPTIMIZER = @adafactor.Adafactor()
    adafactor.Adafactor:
      decay_rate = 0.8
      step_offset = 0
      logical_factor_rules = @adafactor.standard_logical_factor_rules()

    MODEL = @models.EncoderDecoderModel()
    models.EncoderDecoderModel:
      module = @network.Transformer()
      input_vocabulary = %VOCABULARY
      output_vocabulary = %VOCABULARY
      optimizer_def = %OPTIMIZER
      z_loss = %Z_LOSS
      label_smoothing = %LABEL_SMOOTHING
      loss_normalizing_factor = %LOSS_NORMALIZING_FACTOR

    network.Transformer.config = @network.T5Config()
    network.T5Config:
      vocab_size = 32128
      emb_dim = 768
      num_encoder_layers = 12
      dropout_rate = %DROPOUT_RATE
"""

STUB_SIZE_GIN = """
    include 't5x/examples/t5/t5_1_1/base.gin'
    network.T5Config.emb_dim = {emb_dim}
"""
EMB_DIM = {"small": 512, "base": 768, "large": 1024, "xxl": 4096}

PARSE_ALL = """
import json, sys
import gin
search_path, gin_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
gin.add_config_file_search_path(search_path)
out = {}
for name in names:
    gin.clear_config()
    gin.parse_config_files_and_bindings([f"{gin_dir}/{name}"], ["MODEL_DIR = '/tmp/model'"])
    from t5x import models, partitioning, utils
    import seqio
    configured = gin.get_configurable  # dynamic registration leaves the stub modules untouched
    model = configured(models.EncoderDecoderModel)()
    with gin.config_scope("train"):
        train = configured(utils.DatasetConfig)()
    restore = configured(utils.RestoreCheckpointConfig)()
    mixture = seqio.get_mixture_or_task(train.mixture_or_task_name)
    out[name] = {
        "mixture": train.mixture_or_task_name,
        "mixture_tasks": sorted(t.name for t in getattr(mixture, "tasks", [mixture])),
        "lengths": train.task_feature_lengths,
        "batch_size": train.batch_size,
        "use_cached": train.use_cached,
        "train_steps": gin.query_parameter("%TRAIN_STEPS"),
        "eval_period": gin.query_parameter("%EVAL_PERIOD"),
        "checkpoint": restore.path,
        "loss_normalizing_factor": model.loss_normalizing_factor,
        "dropout": model.module.config.dropout_rate,
        "emb_dim": model.module.config.emb_dim,
        "optimizer_decay": model.optimizer_def.decay_rate,
        "num_partitions": configured(partitioning.PjitPartitioner)().num_partitions,
    }
print(json.dumps(out))
"""


def write_stubs(root):
    for rel, text in STUB_MODULES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    gin_dir = root / "t5x" / "examples" / "t5" / "t5_1_1"
    gin_dir.mkdir(parents=True, exist_ok=True)
    (gin_dir / "base.gin").write_text(textwrap.dedent(STUB_BASE_GIN))
    for size, emb_dim in EMB_DIM.items():
        if size != "base":
            (gin_dir / f"{size}.gin").write_text(textwrap.dedent(STUB_SIZE_GIN).format(emb_dim=emb_dim))
    runs = root / "t5x" / "configs" / "runs"
    runs.mkdir(parents=True)
    (runs / "finetune.gin").write_text(textwrap.dedent(STUB_FINETUNE_GIN))


def test_gin_t5x_files_are_what_the_generator_writes():
    assert t5x_gin.stale_files(t5x_gin.GIN_T5X_DIR) == []
    assert sorted(p.name for p in t5x_gin.GIN_T5X_DIR.glob("*.gin")) == sorted(t5x_gin.expected_files())


def test_every_gin_t5x_file_parses_against_stubbed_t5x_and_sets_the_dss_recipe(tmp_path):
    """Syntax/wiring check with stubbed T5X configurables, not a T5X run (see module docstring)."""
    write_stubs(tmp_path)
    names = sorted(t5x_gin.expected_files())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", PARSE_ALL, str(tmp_path), str(t5x_gin.GIN_T5X_DIR), *names],
        cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(parsed) == names
    for benchmark in t5x_gin.BENCHMARKS:
        for size, partitions in t5x_gin.NUM_PARTITIONS.items():
            values = parsed[f"dss_{benchmark}_{size}.gin"]
            assert values["mixture"] == f"dss_{benchmark}_mix_gold_lambda1"
            assert values["mixture_tasks"] == sorted([f"dss_{benchmark}_label_gold", f"dss_{benchmark}_rationale"])
            assert values["lengths"] == {"inputs": 1024, "targets": 256}
            assert values["batch_size"] == 64
            assert values["use_cached"] is False
            assert values["train_steps"] == 1_010_000
            assert values["eval_period"] == 250
            assert values["checkpoint"] == f"gs://t5-data/pretrained_models/t5x/t5_1_1_{size}/checkpoint_1000000"
            assert values["loss_normalizing_factor"] == "AVERAGE_PER_SEQUENCE"
            assert values["dropout"] == 0.1  # set after base.gin's `DROPOUT_RATE = %gin.REQUIRED`
            assert values["emb_dim"] == EMB_DIM[size]  # the size's model file was included
            assert values["optimizer_decay"] == 0.8  # T5X's Adafactor, not AdamW
            assert values["num_partitions"] == partitions
