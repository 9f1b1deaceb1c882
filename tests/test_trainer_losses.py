"""Loss math: per-sequence (mixture) and paired normalisation, one-pass == two-pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lambda_reference
from dss_jax import T5, get_config, losses, trainer


def _hand_made():
    # two rows, 4 target positions; row 0 = label (2 tokens), row 1 = rationale (4 tokens)
    ce = jnp.array([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 4.0, 8.0]])
    weights = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)
    task_ids = jnp.array([[0, 0, 0, 0], [1, 1, 1, 1]], jnp.int32)
    return ce, weights, task_ids


def test_token_mean_counts_every_token_equally():
    ce, w, _ = _hand_made()
    loss = jnp.sum(losses.token_weights("token_mean", w) * ce)
    assert float(loss) == pytest.approx((1 + 3 + 2 + 2 + 4 + 8) / 6)


def test_per_sequence_counts_each_sequences_token_mean_once():
    ce, w, _ = _hand_made()
    loss = jnp.sum(losses.token_weights("per_sequence", w) * ce)
    assert float(loss) == pytest.approx(((1 + 3) / 2 + (2 + 2 + 4 + 8) / 4) / 2)


def test_per_sequence_with_packed_segments_matches_unpacked():
    ce, w, _ = _hand_made()
    packed_ce = jnp.array([[1.0, 3.0, 2.0, 2.0, 4.0, 8.0, 0.0]])
    packed_w = jnp.array([[1, 1, 1, 1, 1, 1, 0]], jnp.float32)
    segments = jnp.array([[1, 1, 2, 2, 2, 2, 0]], jnp.int32)
    packed = jnp.sum(losses.token_weights("per_sequence", packed_w, segment_ids=segments) * packed_ce)
    unpacked = jnp.sum(losses.token_weights("per_sequence", w) * ce)
    assert float(packed) == pytest.approx(float(unpacked))


def test_paired_is_alpha_label_mean_plus_one_minus_alpha_rationale_mean():
    ce = jnp.array([[1.0, 3.0, 0.0, 0.0], [2.0, 2.0, 4.0, 8.0], [5.0, 0.0, 0.0, 0.0], [6.0, 6.0, 0.0, 0.0]])
    w = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], jnp.float32)
    task_ids = jnp.array([[0] * 4, [1] * 4, [0] * 4, [1] * 4], jnp.int32)
    alpha = 0.3
    loss = jnp.sum(losses.token_weights("paired", w, task_ids, alpha=alpha) * ce)
    label_mean = (1 + 3 + 5) / 3
    rationale_mean = (2 + 2 + 4 + 8 + 6 + 6) / 6
    assert float(loss) == pytest.approx(alpha * label_mean + (1 - alpha) * rationale_mean)


def test_paired_mode_needs_task_ids():
    _, w, _ = _hand_made()
    with pytest.raises(ValueError, match="task_ids"):
        losses.token_weights("paired", w)


def test_lambda_maps_to_alpha():
    assert losses.LossConfig.from_lambda("paired", 1.0).alpha == 0.5
    assert losses.LossConfig.from_lambda("paired", 2.0).alpha == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        losses.LossConfig(mode="sum_everything")


def test_z_loss_adds_coefficient_times_log_z_squared():
    logits = jnp.array([[[0.0, 1.0, 2.0]]])
    targets = jnp.array([[2]])
    ce, z = losses.cross_entropy_per_token(logits, targets, z_loss=1e-2)
    log_z = float(jax.nn.logsumexp(logits[0, 0]))
    assert float(z[0, 0]) == pytest.approx(1e-2 * log_z ** 2)
    assert float(ce[0, 0]) == pytest.approx(log_z - 2.0)


# ----------------------------------------------------------------------------- with the model

@pytest.fixture(scope="module")
def tiny_model():
    from dss_jax.model import init_params

    from dss_jax import hardware

    config = hardware.resolve(get_config("t5_1_1_tiny", dropout_rate=0.0))
    return config, T5(config), init_params(config, 0)


def _sequences(rng, n, low, high, vocab):
    return [list(rng.integers(2, vocab, size=int(rng.integers(low, high + 1)))) + [1] for _ in range(n)]


def _pad(seqs, length):
    out = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def _shift(targets, segments=None):
    shifted = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    if segments is not None:  # a new segment starts with the BOS id 0
        starts = np.concatenate([np.ones_like(segments[:, :1], bool), segments[:, 1:] != segments[:, :-1]], 1)
        shifted = np.where(starts, 0, shifted)
    return shifted


def _pack_pairs(label_inputs, label_targets, rationale_inputs, rationale_targets, enc_len, dec_len):
    """One row per example: [label | rationale] packed, segment ids 1 and 2."""
    n = len(label_inputs)
    batch = {k: np.zeros((n, enc_len if k.startswith("encoder") else dec_len), np.int32)
             for k in ("encoder_input_tokens", "encoder_segment_ids", "decoder_target_tokens",
                       "decoder_segment_ids", "task_ids")}
    for i in range(n):
        enc = label_inputs[i] + rationale_inputs[i]
        batch["encoder_input_tokens"][i, :len(enc)] = enc
        batch["encoder_segment_ids"][i, :len(enc)] = [1] * len(label_inputs[i]) + [2] * len(rationale_inputs[i])
        dec = label_targets[i] + rationale_targets[i]
        batch["decoder_target_tokens"][i, :len(dec)] = dec
        batch["decoder_segment_ids"][i, :len(dec)] = [1] * len(label_targets[i]) + [2] * len(rationale_targets[i])
        batch["task_ids"][i, len(label_targets[i]):len(dec)] = 1
    batch["decoder_input_tokens"] = _shift(batch["decoder_target_tokens"], batch["decoder_segment_ids"])
    batch["decoder_loss_weights"] = (batch["decoder_segment_ids"] > 0).astype(np.float32)
    return batch


def _two_pass_reference(model, params, li, lt, ri, rt, alpha):
    def forward(inputs, targets):
        enc, tgt = _pad(inputs, 16), _pad(targets, 12)
        logits = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d, enable_dropout=False))(
            params, enc, _shift(tgt))
        return logits, tgt, (tgt > 0).astype(np.float32)

    return lambda_reference.two_pass_paired_loss(*forward(li, lt), *forward(ri, rt), alpha=alpha)


def _one_pass(model, params, batch, alpha):
    loss_fn = trainer.make_loss_fn(model, losses.LossConfig("paired", alpha=alpha), enable_dropout=False)
    weights = losses.batch_token_weights(batch, losses.LossConfig("paired", alpha=alpha))
    loss, _ = jax.jit(loss_fn)(params, batch, weights, jax.random.PRNGKey(0))
    return loss


def test_packed_one_pass_paired_loss_equals_two_separate_passes(tiny_model):
    config, model, params = tiny_model
    rng = np.random.default_rng(1)
    li = _sequences(rng, 4, 3, 8, config.vocab_size)
    ri = [[5] + s for s in li]
    lt = _sequences(rng, 4, 1, 2, config.vocab_size)
    rt = _sequences(rng, 4, 4, 9, config.vocab_size)
    alpha = 0.4
    reference = _two_pass_reference(model, params, li, lt, ri, rt, alpha)
    packed = _pack_pairs(li, lt, ri, rt, enc_len=24, dec_len=16)
    one_pass = _one_pass(model, params, packed, alpha)
    assert abs(float(one_pass) - float(reference)) < 1e-5


def test_concatenated_rows_one_pass_paired_loss_equals_two_separate_passes(tiny_model):
    config, model, params = tiny_model
    rng = np.random.default_rng(2)
    li = _sequences(rng, 3, 3, 8, config.vocab_size)
    ri = [[5] + s for s in li]
    lt = _sequences(rng, 3, 1, 2, config.vocab_size)
    rt = _sequences(rng, 3, 4, 9, config.vocab_size)
    targets = _pad(lt + rt, 12)
    batch = {"encoder_input_tokens": _pad(li + ri, 16), "decoder_target_tokens": targets,
             "decoder_input_tokens": _shift(targets), "decoder_loss_weights": (targets > 0).astype(np.float32),
             "task_ids": np.repeat(np.array([0] * 3 + [1] * 3)[:, None], 12, axis=1).astype(np.int32)}
    reference = _two_pass_reference(model, params, li, lt, ri, rt, 0.5)
    assert abs(float(_one_pass(model, params, batch, 0.5)) - float(reference)) < 1e-5


def test_gradient_accumulation_over_microbatches_equals_the_full_batch_step(tiny_model):
    import trainer_support as support

    config, model, params = tiny_model
    batch = support.random_batch(np.random.default_rng(3), rows=4, enc_len=10, dec_len=6, vocab=config.vocab_size)
    opt = trainer.make_optimizer("adamw", 1e-2)
    state = trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt.init(params),
                               rng=jax.random.PRNGKey(0))
    results = []
    for micro in (1, 2):
        step = jax.jit(trainer.train_step_fn(model, opt, losses.LossConfig("paired", num_microbatches=micro)))
        new_state, metrics = step(state, batch)
        results.append((new_state.params, float(metrics["loss"])))
    assert results[0][1] == pytest.approx(results[1][1], abs=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(results[0][0]), jax.tree_util.tree_leaves(results[1][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
