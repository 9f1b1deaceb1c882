"""gin plumbing: files found by name, --gin.NAME=VALUE, the paper's settings in the experiment files."""
import pathlib

import gin
import pytest

from dss_jax import gin_utils, trainer
from dss_jax import train as train_lib

GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"
EXPERIMENTS = sorted(p.name for p in GIN_DIR.glob("dss_*.gin"))


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _bound(name):
    """The bound value of ``configurable.param`` or of a macro, following macro references."""
    value = gin.query_parameter(name if "." in name else f"{name}/macro.value")
    while isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro":
        value = gin.query_parameter(f"{value.scoped_selector.split('/')[0]}/macro.value")
    return value


def test_gin_shorthand_flags_become_bindings():
    rest, bindings = gin_utils.rewrite_gin_args(["--gin_file=a.gin", "--gin.MODEL_DIR='/tmp/x'", "--other=1"])
    assert rest == ["--gin_file=a.gin", "--other=1"]
    assert bindings == ["MODEL_DIR = '/tmp/x'"]


def test_gin_files_are_found_by_name_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = gin_utils.find_gin_file("dss_cqa_base.gin", gin_utils.default_search_paths())
    assert pathlib.Path(path).is_file()
    with pytest.raises(FileNotFoundError, match="not found"):
        gin_utils.find_gin_file("no_such_file.gin", gin_utils.default_search_paths())


def test_experiment_files_cover_every_benchmark_and_size():
    for benchmark in ("cqa", "esnli", "anli1", "svamp"):
        for size in ("small", "base", "large", "xxl"):
            assert f"dss_{benchmark}_{size}.gin" in EXPERIMENTS
        assert f"dss_{benchmark}_base_adafactor.gin" in EXPERIMENTS
    assert "dss_arith_tiny.gin" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_file_parses_and_builds_its_model_and_optimizer(name):
    gin_utils.parse_gin([name], ["MODEL_DIR = '/tmp/unused'"])
    config = gin_utils.model_config()
    assert config.vocab_size > 0
    optimizer = gin_utils.optimizer_config()
    assert optimizer.name in trainer.OPTIMIZERS
    assert _bound("BENCHMARK") in ("cqa", "esnli", "anli1", "svamp", "arith")


def test_paper_settings_in_the_cqa_base_experiment():
    gin_utils.parse_gin(["dss_cqa_base.gin"], ["MODEL_DIR = '/tmp/unused'"])
    assert _bound("OptimizerConfig.name") == "adamw"
    assert _bound("OptimizerConfig.learning_rate") == 5e-5
    assert _bound("train.batch_size") == 64
    assert _bound("train.train_steps") == 10000
    assert _bound("train.eval_every") == 250
    assert _bound("train.lam") == 1.0
    assert _bound("train.loss_mode") == "paired"
    assert _bound("model_config.name") == "t5_1_1_base"


def test_adafactor_variant_uses_t5x_defaults():
    gin_utils.parse_gin(["dss_cqa_base_adafactor.gin"], ["MODEL_DIR = '/tmp/unused'"])
    optimizer = gin_utils.optimizer_config()
    assert (optimizer.name, optimizer.schedule, optimizer.adafactor_decay_rate) == ("adafactor", "rsqrt", 0.8)
    assert optimizer.adafactor_momentum is None and optimizer.adafactor_factored
    assert _bound("train.z_loss") == 1e-4


def test_one_binding_selects_a_baseline():
    gin_utils.parse_gin(["dss_cqa_base.gin"], ["MODEL_DIR = '/tmp/unused'", "TRAIN_MODE = 'standard_finetune'"])
    assert _bound("train.train_mode") == "standard_finetune"
    assert train_lib.resolve_task("cqa", "standard_finetune") == ("dss_cqa_standard_finetune", "token_mean", 1.0)


def test_training_modes_resolve_to_the_design_task_names():
    assert train_lib.resolve_task("cqa", "step_by_step", "gold", lam=1.0) == ("dss_cqa_paired_gold", "paired", 0.5)
    assert train_lib.resolve_task("svamp", "standard_distill")[0] == "dss_svamp_standard_distill"
    assert train_lib.resolve_task("anli1", "rationale_then_label", "teacher")[0] == \
        "dss_anli1_rationale_then_label_teacher"
    assert train_lib.resolve_task("esnli", "step_by_step", "gold", fraction=0.125)[0] == "dss_esnli_paired_gold_frac12p5"
    name, mode, alpha = train_lib.resolve_task("cqa", "step_by_step", "teacher", lam=2.0, loss_mode="mixture")
    assert (name, mode, alpha) == ("dss_cqa_mix_teacher_lambda2", "per_sequence", pytest.approx(1 / 3))
    with pytest.raises(ValueError, match="TRAIN_MODE"):
        train_lib.resolve_task("cqa", "distill_everything")


def test_schedules_warm_up_and_decay():
    linear = trainer.make_schedule("linear", 1.0, warmup_steps=10, total_steps=110)
    assert float(linear(5)) == pytest.approx(0.5)
    assert float(linear(10)) == pytest.approx(1.0)
    assert float(linear(60)) == pytest.approx(0.5)
    assert float(linear(110)) == pytest.approx(0.0)
    rsqrt = trainer.make_schedule("rsqrt", 0.01, rsqrt_timescale=100)
    assert float(rsqrt(50)) == pytest.approx(0.01)
    assert float(rsqrt(400)) == pytest.approx(0.005)
    cosine = trainer.make_schedule("cosine", 1.0, total_steps=100, end_factor=0.1)
    assert float(cosine(100)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        trainer.make_schedule("linear", 1.0)


def test_gin_files_are_found_in_the_installed_dss_jax_gin_package(tmp_path, monkeypatch):
    import importlib
    import sys

    package = tmp_path / "site" / "dss_jax_gin"  # what the wheel installs: .gin files, no __init__.py
    package.mkdir(parents=True)
    (package / "only_in_package.gin").write_text("LAMBDA = 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "dss_jax_gin", raising=False)
    importlib.invalidate_caches()
    monkeypatch.chdir(tmp_path)
    found = gin_utils.find_gin_file("only_in_package.gin", gin_utils.default_search_paths())
    assert pathlib.Path(found) == package / "only_in_package.gin"
