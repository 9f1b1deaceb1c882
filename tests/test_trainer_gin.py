"""gin plumbing: files found by name, --gin.NAME=VALUE, the paper's settings in the experiment files."""
import pathlib

import gin
import pytest

from dss_jax import gin_utils, trainer
from dss_jax.cli import train as train_cli  # noqa: F401  registers the `train` configurable

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


def _experiment_and_run(gin_files, bindings=()):
    """The (Experiment, RunConfig) gin builds for the trainer from these files."""
    gin_utils.parse_gin(gin_files, ["MODEL_DIR = '/tmp/unused'", *bindings])
    return gin_utils.experiment_config(), gin_utils.run_config()


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_file_builds_a_valid_experiment_and_run(name):
    experiment, run = _experiment_and_run([name])
    assert experiment.model.vocab_size > 0
    assert experiment.optimizer.name in trainer.OPTIMIZERS
    assert experiment.benchmark in ("cqa", "esnli", "anli1", "svamp", "arith")
    assert run.train.steps >= 1


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "dss_arith_tiny.gin"])
def test_paper_experiment_files_start_from_the_public_t5_1_1_checkpoints(name):
    experiment, _ = _experiment_and_run([name])
    size = name.split("_")[2].removesuffix(".gin")
    assert experiment.initial_checkpoint == f"google/t5-v1_1-{size}"


def test_the_embedded_smoke_run_starts_from_an_explicit_random_initialisation():
    experiment, _ = _experiment_and_run(["dss_arith_tiny.gin"])
    assert experiment.initial_checkpoint == "random" and experiment.random_init


def test_paper_settings_in_the_cqa_base_experiment():
    experiment, run = _experiment_and_run(["dss_cqa_base.gin"])
    assert (experiment.optimizer.name, experiment.optimizer.learning_rate, experiment.optimizer.schedule) == \
        ("adamw", 5e-5, "linear")
    assert experiment.input.batch_size == 64
    assert experiment.input.sequence_lengths == {"inputs": 1024, "targets": 256}
    assert (run.train.steps, run.eval.every) == (10000, 250)
    assert (experiment.lam, experiment.loss_mode, experiment.alpha) == (1.0, "paired", 0.5)
    assert _bound("model_config.name") == "t5_1_1_base"


def test_adafactor_variant_uses_t5x_defaults():
    experiment, _ = _experiment_and_run(["dss_cqa_base_adafactor.gin"])
    optimizer = experiment.optimizer
    assert (optimizer.name, optimizer.schedule, optimizer.adafactor_decay_rate) == ("adafactor", "rsqrt", 0.8)
    assert optimizer.adafactor_momentum is None and optimizer.adafactor_factored
    assert experiment.z_loss == 1e-4


def test_one_binding_selects_a_baseline():
    experiment, _ = _experiment_and_run(["dss_cqa_base.gin"], ["Experiment.method = 'standard_finetune'"])
    assert experiment.method == "standard_finetune"


def test_a_misnamed_setting_is_an_error_naming_it():
    with pytest.raises(ValueError, match="lamda"):
        _experiment_and_run(["dss_cqa_base.gin"], ["Experiment.lamda = 2.0"])


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
    (package / "only_in_package.gin").write_text("Experiment.lam = 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "dss_jax_gin", raising=False)
    importlib.invalidate_caches()
    monkeypatch.chdir(tmp_path)
    found = gin_utils.find_gin_file("only_in_package.gin", gin_utils.default_search_paths())
    assert pathlib.Path(found) == package / "only_in_package.gin"
