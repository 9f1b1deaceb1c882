"""T5X checkpoints both ways, against T5X's own model and checkpointer (tiny T5 1.1, float32, CPU).

A T5X `EncoderDecoderModel` is initialised by T5X and saved with T5X's `Checkpointer`
(the format of the public gs://t5-data/pretrained_models/t5x checkpoints); dss_jax loads
it and must give T5X's logits. The reverse: dss_jax parameters written by
`t5x_checkpoint.write_t5x_checkpoint`, restored by T5X's own checkpointer, give dss_jax's logits.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_support import requires_t5x, tiny_dss_config, tiny_t5x_model

pytestmark = requires_t5x

LOGITS_TOLERANCE_FLOAT32 = 1e-4


@pytest.fixture(scope="module")
def batch():
    rng = np.random.RandomState(0)
    encoder = rng.randint(2, 128, size=(3, 20)).astype(np.int32)
    encoder[0, 15:] = 0
    encoder[1, 7:] = 0
    targets = rng.randint(2, 128, size=(3, 10)).astype(np.int32)
    targets[1, 6:] = 0  # a padded target row: only real positions are compared
    decoder_inputs = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
    return encoder, decoder_inputs, targets


def _t5x_logits(model, params, batch):
    encoder, decoder_inputs, targets = batch
    apply = jax.jit(lambda p: model.module.apply({"params": p}, encoder, decoder_inputs, targets,
                                                 enable_dropout=False))
    return np.asarray(apply(params))


def _dss_logits(config, params, batch):
    import dss_jax
    from dss_jax import hardware

    encoder, decoder_inputs, _ = batch
    model = dss_jax.T5(hardware.resolve(config))
    apply = jax.jit(lambda p: model.apply({"params": p}, encoder, decoder_inputs, enable_dropout=False))
    return np.asarray(apply(params))


def _assert_same_logits(ours, theirs, batch):
    real = batch[2] > 0
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours[real], theirs[real], atol=LOGITS_TOLERANCE_FLOAT32, rtol=0)


@pytest.fixture(scope="module")
def t5x_written(tmp_path_factory):
    """(config, T5X model, T5X params, step dir): a tiny model initialised and saved by T5X itself."""
    from t5x import checkpoints, partitioning
    from t5x import train_state as train_state_lib

    config = tiny_dss_config()
    model = tiny_t5x_model(config)
    variables = model.get_initial_variables(jax.random.PRNGKey(7), {"encoder_input_tokens": (1, 8),
                                                                     "decoder_input_tokens": (1, 8)})
    # T5X initialises layer-norm scales to 1; perturb them so a swapped scale would show.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * (1.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(len(str(path))), x.shape))
        if path[-1].key == "scale" else x, variables["params"])
    state = train_state_lib.FlaxOptimTrainState.create(model.optimizer_def, {**variables, "params": params})
    state = state.replace_step(jnp.asarray(1234, jnp.int32))
    directory = tmp_path_factory.mktemp("t5x_ckpt")
    checkpoints.Checkpointer(state, partitioning.PjitPartitioner(num_partitions=1), str(directory)).save(state)
    return config, model, params, directory / "checkpoint_1234"


def test_t5x_checkpoint_loads_into_dss_jax_with_t5x_logits(t5x_written, batch):
    from dss_jax import initial_params
    from dss_jax.model import abstract_params

    config, model, params, step_dir = t5x_written
    loaded = initial_params.load_initial_params(str(step_dir), abstract_params(config), config)
    _assert_same_logits(_dss_logits(config, loaded, batch), _t5x_logits(model, params, batch), batch)


def test_t5x_model_dir_loads_its_latest_checkpoint(t5x_written):
    from dss_jax import t5x_checkpoint

    _, _, params, step_dir = t5x_written
    read = t5x_checkpoint.read_t5x_params(step_dir.parent)
    np.testing.assert_array_equal(read["decoder"]["logits_dense"]["kernel"],
                                  np.asarray(params["decoder"]["logits_dense"]["kernel"]))


def test_t5x_checkpoint_loads_into_scanned_model(t5x_written, batch):
    from dss_jax import initial_params
    from dss_jax.model import abstract_params

    config, model, params, step_dir = t5x_written
    scanned = config.replace(scan_layers=True)
    loaded = initial_params.load_initial_params(str(step_dir), abstract_params(scanned), scanned)
    _assert_same_logits(_dss_logits(scanned, loaded, batch), _t5x_logits(model, params, batch), batch)


def test_t5x_checkpoint_of_another_size_names_the_differing_shapes(t5x_written):
    from dss_jax import initial_params
    from dss_jax.model import abstract_params

    _, _, _, step_dir = t5x_written
    wider = tiny_dss_config(d_ff=96)
    with pytest.raises(initial_params.InitialCheckpointError, match=r"wi_0/kernel has shape \(32, 64\)"):
        initial_params.load_initial_params(str(step_dir), abstract_params(wider), wider)


def test_dss_params_written_as_t5x_restore_in_t5x_with_dss_logits(tmp_path, batch):
    from t5x import checkpoints, partitioning
    from t5x import train_state as train_state_lib

    from dss_jax import t5x_checkpoint
    from dss_jax.model import init_params

    config = tiny_dss_config()
    params = init_params(config, rng=3)
    step_dir = t5x_checkpoint.write_t5x_checkpoint(config, params, tmp_path, step=40)
    assert step_dir == tmp_path / "checkpoint_40"

    model = tiny_t5x_model(config)
    shapes = {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)}
    abstract = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
    template = train_state_lib.FlaxOptimTrainState.create(
        model.optimizer_def, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), abstract))
    restored = checkpoints.Checkpointer(template, partitioning.PjitPartitioner(num_partitions=1),
                                        str(tmp_path)).restore(path=str(step_dir))
    assert int(restored.step) == 40
    _assert_same_logits(_t5x_logits(model, restored.params, batch), _dss_logits(config, params, batch), batch)


def test_model_t5x_cannot_express_is_refused_before_writing(tmp_path):
    from dss_jax import t5x_checkpoint

    untied_but_scaled = tiny_dss_config(scale_decoder_outputs=True)
    with pytest.raises(t5x_checkpoint.T5XCheckpointError, match="scale_decoder_outputs=True"):
        t5x_checkpoint.write_t5x_checkpoint(untied_but_scaled, {}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_tensorstore_spec_of_a_gs_checkpoint_reads_from_that_bucket():
    from dss_jax import t5x_checkpoint

    stored = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket",
                                            "path": "target.encoder.encoder_norm.scale/"}}
    spec = t5x_checkpoint.tensorstore_spec("gs://t5-data/pretrained_models/t5x/t5_1_1_small/checkpoint_1000000",
                                           stored)
    assert spec["kvstore"] == {"driver": "gcs", "bucket": "t5-data",
                               "path": "pretrained_models/t5x/t5_1_1_small/checkpoint_1000000/"
                                       "target.encoder.encoder_norm.scale/"}
