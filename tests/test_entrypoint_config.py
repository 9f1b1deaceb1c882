"""Every entrypoint checks its gin settings before it builds anything (issue 17 item 5).

A misspelt or unused macro, a missing MODEL_DIR / OUTPUT, a literal of the wrong type, an
unknown setting and an unquoted string are each exit 2 with one message naming the setting
(and what it accepts), no traceback, and nothing written.
"""
import pathlib

import pytest

from dss_jax import gin_utils
from dss_jax.cli import evaluate as eval_cli
from dss_jax.cli import infer as infer_cli
from dss_jax.cli import train as train_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRYPOINTS = {"train": (train_cli.main, ["--gin_file=dss_arith_tiny.gin"]),
               "eval": (eval_cli.main, ["--gin_file=runs/eval.gin"]),
               "infer": (infer_cli.main, ["--gin_file=runs/infer.gin", "--gin.OUTPUT='/tmp/never_written.jsonl'"])}


@pytest.fixture(autouse=True)
def _clean_gin():
    import gin

    gin.clear_config()
    yield
    gin.clear_config()


def _run(capsys, name, *flags) -> tuple[int, str]:
    main, base = ENTRYPOINTS[name]
    code = main([*base, *flags])
    return code, capsys.readouterr().err


def _model_dir(tmp_path) -> str:
    return f"--gin.MODEL_DIR='{tmp_path / 'run'}'"


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_a_misspelt_macro_on_the_command_line_is_an_error_naming_it(capsys, tmp_path, name):
    code, err = _run(capsys, name, _model_dir(tmp_path), "--gin.TRAIN_STEPZ=5")
    assert code == 2 and "gin macro TRAIN_STEPZ = 5 is set but no setting uses it" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_macro_set_in_a_gin_file_but_never_used_is_an_error(capsys, tmp_path):
    gin_file = tmp_path / "mine.gin"
    gin_file.write_text("include 'dss_arith_tiny.gin'\nMODEL_DRI = '/tmp/elsewhere'\n")
    code = train_cli.main([f"--gin_file={gin_file}", _model_dir(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "gin macro MODEL_DRI" in err and "did you mean MODEL_DIR?" in err


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_a_missing_model_dir_is_a_clear_error(capsys, name):
    code, err = _run(capsys, name)
    assert code == 2 and "MODEL_DIR is not set" in err and "--gin.MODEL_DIR=" in err
    assert "TypeError" not in err and "Traceback" not in err


def test_a_missing_output_of_infer_is_a_clear_error(capsys, tmp_path):
    code = infer_cli.main(["--gin_file=runs/infer.gin", _model_dir(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "OUTPUT is not set (it is required by infer.output)" in err


@pytest.mark.parametrize("binding, message", [
    ("InputConfig.batch_size='8'", "InputConfig.batch_size = '8' is not valid: expected an integer"),
    ("OptimizerConfig.learning_rate='1e-3'", "OptimizerConfig.learning_rate = '1e-3' is not valid: expected a number"),
    ("TrainConfig.steps=2.5", "TrainConfig.steps = 2.5 is not valid: expected an integer"),
    ("MeshConfig.shape='2,1'", "MeshConfig.shape = '2,1' is not valid: expected a tuple / list"),
    ("TrainConfig.steps=-3", "TrainConfig.steps = -3 is not valid: expected an integer >= 1"),
    ("model_config.overrides={'d_model': '32'}",
     "model_config.overrides['d_model'] = '32' is not valid: expected a value of type int"),
])
def test_a_value_of_the_wrong_type_names_the_setting_and_what_it_accepts(capsys, tmp_path, binding, message):
    code, err = _run(capsys, "train", _model_dir(tmp_path), f"--gin.{binding}")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is built or written"


@pytest.mark.parametrize("binding, message", [
    ("InputConfig.batch_sise=8", "Did you mean batch_size?"),
    ("InputConfg.batch_size=8", "Did you mean InputConfig"),
    ("model_config.overrides={'d_modle': 8}", "model_config.overrides['d_modle'] is not a T5Config setting; "
                                              "did you mean d_model?"),
    ("model_config.name='t5_1_1_tinyy'", "model_config.name = 't5_1_1_tinyy' is not valid: expected one of"),
])
def test_an_unknown_setting_is_an_error_with_the_close_name(capsys, tmp_path, binding, message):
    code, err = _run(capsys, "train", _model_dir(tmp_path), f"--gin.{binding}")
    assert code == 2 and message in err and "Traceback" not in err


def test_an_unquoted_string_value_says_to_quote_it(capsys, tmp_path):
    code, err = _run(capsys, "train", f"--gin.MODEL_DIR={tmp_path}/run")
    assert code == 2 and f"--gin.MODEL_DIR=\"'{tmp_path}/run'\"" in err


@pytest.mark.parametrize("name, binding, message", [
    ("eval", "evaluate_checkpoint.split='tset'", "evaluate_checkpoint.split = 'tset' is not valid"),
    ("eval", "evaluate_checkpoint.step='latest'", "evaluate_checkpoint.step = 'latest' is not valid: expected an "
                                                  "integer or None"),
    ("infer", "infer.split='dev'", "infer.split = 'dev' is not valid"),
    ("infer", "infer.rationales='yes'", "infer.rationales = 'yes' is not valid: expected True or False"),
])
def test_eval_and_infer_settings_are_checked_before_reading_the_run(capsys, tmp_path, name, binding, message):
    code, err = _run(capsys, name, _model_dir(tmp_path), f"--gin.{binding}")
    assert code == 2 and message in err


def test_eval_of_a_directory_that_is_not_a_run_names_it(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    code, err = _run(capsys, "eval", _model_dir(tmp_path))
    assert code == 2 and f"{tmp_path / 'run'} is not a run directory" in err


@pytest.mark.parametrize("gin_file", sorted(p.name for p in (REPO / "gin").glob("dss_*.gin")))
def test_every_shipped_experiment_file_passes_the_check(gin_file):
    gin_utils.parse_gin([gin_file], ["MODEL_DIR = '/tmp/run'"])
    gin_utils.check_configuration()
