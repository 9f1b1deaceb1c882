"""The Experiment record: validation, the tasks and loss derived from it, its JSON form, resume comparison."""
import dataclasses
import json

import pytest

from dss_jax import configs, experiment as experiment_lib


def _experiment(**overrides):
    base = dict(model=configs.get_config("t5_1_1_tiny"), initial_checkpoint="random", benchmark="cqa")
    return experiment_lib.Experiment(**{**base, **overrides})


@pytest.mark.parametrize("overrides, train, kind, evaluated, loss_mode", [
    ({}, "dss_cqa_paired_gold", "paired", ("dss_cqa_label_gold",), "paired"),
    ({"labels": "teacher", "fraction": 0.25}, "dss_cqa_paired_teacher_frac25", "paired",
     ("dss_cqa_label_teacher_frac25",), "paired"),
    ({"loss_mode": "mixture", "lam": 2.0}, "dss_cqa_mix_gold_lambda2", "mixture", ("dss_cqa_label_gold",),
     "per_sequence"),
    ({"method": "standard_finetune", "seed": 3}, "dss_cqa_standard_finetune_seed3", "single",
     ("dss_cqa_standard_finetune_seed3",), "token_mean"),
    ({"method": "standard_distill"}, "dss_cqa_standard_distill", "single", ("dss_cqa_standard_distill",),
     "token_mean"),
    ({"method": "rationale_then_label", "labels": "teacher"}, "dss_cqa_rationale_then_label_teacher", "single",
     ("dss_cqa_rationale_then_label_teacher",), "token_mean"),
])
def test_each_method_derives_its_training_task_evaluation_tasks_and_loss(overrides, train, kind, evaluated,
                                                                        loss_mode):
    tasks = _experiment(**overrides).tasks()
    assert (tasks.train, tasks.kind, tasks.eval, tasks.loss_mode) == (train, kind, evaluated, loss_mode)


def test_the_mixture_marks_its_rationale_task_by_name_not_by_suffix():
    tasks = _experiment(loss_mode="mixture").tasks()
    assert tasks.rationale_tasks == ("dss_cqa_rationale",) and tasks.rationale == "dss_cqa_rationale"
    stream = _experiment(loss_mode="mixture").stream()
    assert stream.task_id("dss_cqa_rationale") == 1 and stream.task_id("dss_cqa_label_gold") == 0


@pytest.mark.parametrize("lam, alpha", [(0.0, 1.0), (1.0, 0.5), (2.0, 1 / 3), (0.5, 2 / 3)])
def test_alpha_is_one_over_one_plus_lambda_for_every_lambda(lam, alpha):
    experiment = _experiment(lam=lam)
    assert experiment.alpha == pytest.approx(alpha)
    assert experiment.loss_config().alpha == pytest.approx(alpha)


def test_a_mixture_with_lambda_zero_is_refused_naming_the_setting():
    with pytest.raises(experiment_lib.ConfigError, match=r"Experiment.lam .*mixture"):
        _experiment(loss_mode="mixture", lam=0.0)


@pytest.mark.parametrize("overrides, setting", [
    ({"method": "distill_everything"}, "Experiment.method"),
    ({"labels": "silver"}, "Experiment.labels"),
    ({"lam": "1"}, "Experiment.lam"),
    ({"fraction": 0.0}, "Experiment.fraction"),
    ({"seed": -1}, "Experiment.seed"),
    ({"initial_checkpoint": None}, "Experiment.initial_checkpoint"),
    ({"input": experiment_lib.InputConfig}, "Experiment.input"),
    ({"task": "my_task"}, "Experiment.eval_tasks"),
])
def test_an_invalid_setting_is_refused_with_its_name_and_accepted_values(overrides, setting):
    with pytest.raises(experiment_lib.ConfigError, match=setting.replace(".", r"\.") + ".*expected"):
        _experiment(**overrides)


@pytest.mark.parametrize("factory, kwargs, setting", [
    (experiment_lib.InputConfig, {"batch_size": "8"}, "InputConfig.batch_size"),
    (experiment_lib.InputConfig, {"sequence_lengths": {"inputs": 8}}, "InputConfig.sequence_lengths"),
    (experiment_lib.TrainConfig, {"steps": 0}, "TrainConfig.steps"),
    (experiment_lib.EvalConfig, {"split": "dev"}, "EvalConfig.split"),
    (experiment_lib.CheckpointConfig, {"keep": 0}, "CheckpointConfig.keep"),
    (experiment_lib.MeshConfig, {"shape": (2,)}, "MeshConfig.shape"),
])
def test_the_typed_configs_refuse_bad_values_by_name(factory, kwargs, setting):
    with pytest.raises(experiment_lib.ConfigError, match=setting.replace(".", r"\.")):
        factory(**kwargs)


def test_the_default_sequence_lengths_are_the_reference_code_s_1024_and_256():
    assert experiment_lib.InputConfig().sequence_lengths == {"inputs": 1024, "targets": 256}


def test_the_experiment_record_round_trips_through_its_json_text():
    experiment = experiment_lib.with_total_steps(_experiment(labels="teacher", fraction=0.5, seed=2), 123)
    run = experiment_lib.RunConfig(train=experiment_lib.TrainConfig(steps=123, log_every=7),
                                   mesh=experiment_lib.MeshConfig(shape=(2, 1)))
    text = experiment_lib.dumps(experiment, run)
    assert json.loads(text)["experiment"]["optimizer"]["total_steps"] == 123
    assert experiment_lib.loads(text) == (experiment, run)


def test_a_damaged_record_is_a_clear_error():
    with pytest.raises(experiment_lib.ConfigError, match="not a valid experiment record.*colour"):
        experiment_lib.loads("{\"experiment\": {\"model\": {\"d_model\": 8}, \"colour\": 1}}")


def test_differences_list_every_changed_setting_except_those_allowed_to_change():
    old = _experiment()
    new = dataclasses.replace(old, lam=2.0, input=experiment_lib.InputConfig(batch_size=8),
                              optimizer=dataclasses.replace(old.optimizer, learning_rate=1.0, total_steps=9))
    names = [name for name, _, _ in experiment_lib.differences(old.to_dict(), new.to_dict())]
    assert names == ["input.batch_size", "lam", "optimizer.learning_rate", "optimizer.total_steps"]
    allowed = experiment_lib.differences(old.to_dict(), new.to_dict(), ["optimizer.", "lam"])
    assert [name for name, _, _ in allowed] == ["input.batch_size"]


def test_a_fraction_run_evaluates_on_the_validation_split_of_its_own_fraction(dss_data_dir, bench_spm_model):
    import seqio

    experiment = _experiment(benchmark="svamp", fraction=0.5, seed=1, vocab=str(bench_spm_model))
    experiment.use_vocabulary()
    (eval_task,) = experiment.tasks().eval
    lengths = {"inputs": 256, "targets": 64}

    def inputs(name, split):
        ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
        return {bytes(ex["inputs_pretokenized"]) for ex in ds.as_numpy_iterator()}

    validation, trained_on = inputs(eval_task, "validation"), inputs(eval_task, "train")
    full_train_validation = inputs("dss_svamp_label_gold", "validation")
    assert validation and not validation & trained_on, "the validation split overlaps the run's training data"
    assert full_train_validation & trained_on, "(the full-train validation split would have overlapped it)"
