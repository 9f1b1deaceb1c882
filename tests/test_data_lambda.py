"""λ done right: per-sequence normalisation of a 1 : λ mixture equals the paired objective.

A synthetic model: parameters θ ∈ R^3, each target token t has a point c_t and loss
½‖θ − c_t‖² (gradient θ − c_t). Label sequences are short (1-5 tokens) with points near
μ_label, rationales long (20-60 tokens) with points near μ_rationale, so the direction of
the gradient shows how label and rationale are weighted against each other.
"""
import jax.numpy as jnp
import numpy as np
import pytest

import lambda_reference as lambda_weights

DIM = 3
THETA = np.zeros(DIM)  # label loss ≈ 3.5, rationale loss ≈ 2.5 here
MU_LABEL = np.array([2.0, 0.0, 0.0])
MU_RATIONALE = np.array([0.0, -1.0, 1.0])


def _sequences(rng, count, low, high, mean, max_len):
    lengths = rng.integers(low, high + 1, size=count)
    points = mean + rng.normal(size=(count, max_len, DIM))
    mask = (np.arange(max_len)[None, :] < lengths[:, None]).astype(np.float64)
    return points, mask


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    label_points, label_mask = _sequences(rng, 500, 1, 5, MU_LABEL, 64)
    rationale_points, rationale_mask = _sequences(rng, 500, 20, 60, MU_RATIONALE, 64)
    return label_points, label_mask, rationale_points, rationale_mask


def _token_loss_and_grad(points):
    diff = THETA - points  # [..., T, DIM]
    return 0.5 * (diff ** 2).sum(-1), diff


def _per_sequence_means(points, mask):
    loss, grad = _token_loss_and_grad(points)
    counts = mask.sum(-1)
    return (loss * mask).sum(-1) / counts, (grad * mask[..., None]).sum(-2) / counts[:, None]


def _paired_objective(corpus, lam):
    """α · L_label + (1 − α) · L_rationale with each L the mean of per-sequence token-means."""
    label_points, label_mask, rationale_points, rationale_mask = corpus
    alpha = lambda_weights.alpha_from_lambda(lam)
    label_loss, label_grad = _per_sequence_means(label_points, label_mask)
    rationale_loss, rationale_grad = _per_sequence_means(rationale_points, rationale_mask)
    loss = alpha * label_loss.mean() + (1 - alpha) * rationale_loss.mean()
    grad = alpha * label_grad.mean(0) + (1 - alpha) * rationale_grad.mean(0)
    return loss, grad


def _mixture_batches(corpus, lam, num_batches, batch_size, seed):
    """Batches drawn from the mixture at rates 1 : λ: (points, mask) of shape [M, B, T(, DIM)]."""
    label_points, label_mask, rationale_points, rationale_mask = corpus
    rng = np.random.default_rng(seed)
    is_rationale = rng.random((num_batches, batch_size)) < lam / (1 + lam)
    index = rng.integers(0, len(label_mask), size=(num_batches, batch_size))
    points = np.where(is_rationale[..., None, None], rationale_points[index], label_points[index])
    mask = np.where(is_rationale[..., None], rationale_mask[index], label_mask[index])
    return points, mask


def _batch_losses(points, mask, normalisation):
    loss, grad = _token_loss_and_grad(points)
    if normalisation == "per_sequence":
        weights = lambda_weights.per_sequence_loss_weights(mask) / mask.shape[-2]  # / batch size
    else:  # one token-sum normalisation over the mixed batch
        weights = mask / mask.sum(axis=(-1, -2), keepdims=True)
    batch_loss = (weights * loss).sum(axis=(-1, -2))
    batch_grad = (weights[..., None] * grad).sum(axis=(-2, -3))
    return batch_loss, batch_grad


def _mean_and_standard_error(values):
    return values.mean(0), values.std(0) / np.sqrt(len(values))


def _gaps_to_paired_objective(corpus, lam, weighting):
    """|mixture - paired| of the expected loss and of each gradient component, in standard
    errors of the mixture's estimate over 1500 batches of 16."""
    points, mask = _mixture_batches(corpus, lam, num_batches=1500, batch_size=16, seed=1)
    batch_loss, batch_grad = _batch_losses(points, mask, weighting)
    loss, loss_error = _mean_and_standard_error(batch_loss)
    grad, grad_error = _mean_and_standard_error(batch_grad)
    expected_loss, expected_grad = _paired_objective(corpus, lam)
    return abs(loss - expected_loss) / loss_error, np.abs(grad - expected_grad) / grad_error


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_per_sequence_mixture_matches_paired_objective_in_loss_and_gradient(corpus, lam):
    loss_gap, grad_gaps = _gaps_to_paired_objective(corpus, lam, "per_sequence")
    assert loss_gap < 4
    assert np.all(grad_gaps < 4)


@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
def test_token_sum_mixture_misses_paired_objective_by_many_standard_errors(corpus, lam):
    loss_gap, grad_gaps = _gaps_to_paired_objective(corpus, lam, "token_sum")
    assert loss_gap > 20
    assert np.max(grad_gaps) > 20


def test_token_sum_mixture_optimises_the_length_inflated_lambda(corpus):
    label_points, label_mask, rationale_points, rationale_mask = corpus
    lam = 1.0
    effective = lambda_weights.effective_lambda_with_token_sum(lam, label_mask.sum(-1).mean(), rationale_mask.sum(-1).mean())
    assert 10 < effective < 15  # ≈ 40 / 3
    points, mask = _mixture_batches(corpus, lam, num_batches=1500, batch_size=16, seed=2)
    batch_loss, _ = _batch_losses(points, mask, "token_sum")
    expected_loss, _ = _paired_objective(corpus, effective)
    assert batch_loss.mean() == pytest.approx(expected_loss, rel=0.02)


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_paired_weights_give_the_reference_objective_on_each_batch(corpus, lam):
    label_points, label_mask, rationale_points, rationale_mask = corpus
    label_loss, _ = _token_loss_and_grad(label_points[:16])
    rationale_loss, _ = _token_loss_and_grad(rationale_points[:16])
    label_w, rationale_w = lambda_weights.paired_loss_weights(label_mask[:16], rationale_mask[:16], lam)
    combined = (label_w * label_loss).sum() + (rationale_w * rationale_loss).sum()
    alpha = 1 / (1 + lam)
    label_token_mean = label_loss[label_mask[:16] > 0].mean()
    rationale_token_mean = rationale_loss[rationale_mask[:16] > 0].mean()
    assert combined == pytest.approx(alpha * label_token_mean + (1 - alpha) * rationale_token_mean)


def _reference_objective(corpus, lam):
    """The reference's population objective: each task's loss is a token-weighted mean."""
    label_points, label_mask, rationale_points, rationale_mask = corpus
    alpha = lambda_weights.alpha_from_lambda(lam)
    label_loss, _ = _token_loss_and_grad(label_points)
    rationale_loss, _ = _token_loss_and_grad(rationale_points)
    return (alpha * (label_loss * label_mask).sum() / label_mask.sum()
            + (1 - alpha) * (rationale_loss * rationale_mask).sum() / rationale_mask.sum())


def test_paired_batches_estimate_the_reference_objective(corpus):
    label_points, label_mask, rationale_points, rationale_mask = corpus
    rng = np.random.default_rng(3)
    values = []
    for _ in range(400):
        index = rng.integers(0, len(label_mask), size=16)
        label_loss, _ = _token_loss_and_grad(label_points[index])
        rationale_loss, _ = _token_loss_and_grad(rationale_points[index])
        label_w, rationale_w = lambda_weights.paired_loss_weights(label_mask[index], rationale_mask[index], 1.0)
        values.append((label_w * label_loss).sum() + (rationale_w * rationale_loss).sum())
    mean, error = _mean_and_standard_error(np.array(values))
    assert abs(mean - _reference_objective(corpus, 1.0)) < 4 * error


def test_reference_and_per_sequence_objectives_agree_when_token_loss_is_length_independent(corpus):
    # They differ only in how sequences of one task are weighted against each other
    # (by length, or equally); here only by the finite corpus' noise.
    for lam in (0.5, 1.0, 2.0):
        per_sequence, _ = _paired_objective(corpus, lam)
        assert _reference_objective(corpus, lam) == pytest.approx(per_sequence, rel=0.03)


def test_per_sequence_weights_make_each_row_sum_to_one_and_skip_empty_rows():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    weights = lambda_weights.per_sequence_loss_weights(mask)
    assert weights.sum(-1).tolist() == [1.0, 1.0, 0.0]
    assert weights[0].tolist() == [0.5, 0.5, 0.0, 0.0]


def test_per_sequence_weights_work_on_jax_arrays():
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(
        np.asarray(lambda_weights.per_sequence_loss_weights(jnp.asarray(mask))),
        lambda_weights.per_sequence_loss_weights(mask),
    )


def test_packed_segments_weigh_like_separate_rows():
    packed_mask = np.array([[1, 1, 1, 1, 1, 0]])
    segment_ids = np.array([[1, 1, 2, 2, 2, 0]])
    weights = lambda_weights.per_sequence_loss_weights(packed_mask, segment_ids)
    np.testing.assert_allclose(weights, [[0.5, 0.5, 1 / 3, 1 / 3, 1 / 3, 0.0]])


def test_mixture_rates_and_alpha():
    assert lambda_weights.mixture_rates(1.0) == (0.5, 0.5)
    assert lambda_weights.mixture_rates(2.0) == pytest.approx((1 / 3, 2 / 3))
    with pytest.raises(ValueError):
        lambda_weights.alpha_from_lambda(0.0)


def test_the_trainer_loss_weights_are_these_weights():
    """The λ property above is proven on `lambda_weights`; the trainer runs `losses.token_weights`.
    Both must give the same per-token weights, so the proof covers what is trained."""
    from dss_jax import losses

    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 12, size=8)
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.float32)
    task_ids = np.repeat(np.array([[0], [1]] * 4), 12, axis=1)  # rows alternate label / rationale
    trainer_per_sequence = np.asarray(losses.token_weights("per_sequence", jnp.asarray(mask)))
    np.testing.assert_allclose(trainer_per_sequence, lambda_weights.per_sequence_loss_weights(mask) / len(mask),
                               rtol=1e-6)
    lam = 2.0
    label_w, rationale_w = lambda_weights.paired_loss_weights(mask * (task_ids == 0), mask * (task_ids == 1), lam)
    trainer_paired = np.asarray(losses.token_weights("paired", jnp.asarray(mask), jnp.asarray(task_ids),
                                                     alpha=lambda_weights.alpha_from_lambda(lam)))
    np.testing.assert_allclose(trainer_paired, label_w + rationale_w, rtol=1e-6)
