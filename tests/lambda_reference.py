"""Test oracle (no tests here): the loss weights of `L_label + λ·L_rationale`, written out as the
reference code states them, separately from the trainer's `dss_jax.losses.token_weights`.

Works on numpy and jax arrays alike (only array methods and operators are used).

Mixture mode (SeqIO mixture of the label and rationale tasks at rates 1 : λ):
  weights = per_sequence_loss_weights(decoder_loss_weights)       # each row sums to 1
  loss    = sum(weights * token_loss) / batch_size
Every target sequence then counts once, whatever its length, and the expected batch loss
is `(L_label + λ·L_rationale) / (1 + λ)`; with one token-sum normalisation the ~40-token
rationales would swamp the ~3-token labels (effective λ ≈ λ · 40/3).

Paired mode (the reference code's exact objective, `dss_{b}_paired_{l}` tasks):
  label_w, rationale_w = paired_loss_weights(label_mask, rationale_mask, lam)
  loss = sum(label_w * label_token_loss) + sum(rationale_w * rationale_token_loss)
      = α · token-mean(label batch) + (1 − α) · token-mean(rationale batch),  α = 1/(1+λ).

See docs/lambda.md for the derivation and the numerical check. The trainer computes the
same weights inside its jitted step with `dss_jax.losses.token_weights` (one forward pass
over mixed rows); `tests/test_data_lambda.py` proves the λ properties here and checks that
the trainer's weights agree with these.

`two_pass_paired_loss` is the reference objective from two separate forward passes.
"""
from __future__ import annotations

from typing import Optional, Tuple


def alpha_from_lambda(lam: float) -> float:
    """The reference code's α for `L_label + λ·L_rationale` (α = 0.5 for λ = 1)."""
    if not lam > 0:
        raise ValueError(f"lambda must be positive, got {lam}")
    return 1.0 / (1.0 + lam)


def mixture_rates(lam: float) -> Tuple[float, float]:
    """Sampling rates (label, rationale) of the mixture, as probabilities."""
    alpha = alpha_from_lambda(lam)
    return alpha, 1.0 - alpha


def _safe_divide(numerator, denominator):
    # x / max(d, 1) without importing numpy or jax: empty rows keep weight 0.
    return numerator / (denominator + (denominator == 0))


def per_sequence_loss_weights(targets_mask, segment_ids: Optional[object] = None):
    """Per-token weights that give each target sequence a total weight of 1.

    `targets_mask` is [batch, length] (1 for target tokens, 0 for padding; e.g. seqio's
    `decoder_loss_weights`). With `segment_ids` (packed examples, 0 = padding) each
    packed segment counts as its own sequence; that path builds a
    [batch, length, length] comparison, fine for target lengths of a few hundred.
    Rows (segments) without tokens get weight 0.
    """
    mask = targets_mask * 1.0
    if segment_ids is None:
        counts = mask.sum(axis=-1, keepdims=True)
        return _safe_divide(mask, counts)
    same_segment = (segment_ids[..., :, None] == segment_ids[..., None, :]) * mask[..., None, :]
    counts = same_segment.sum(axis=-1)
    return _safe_divide(mask, counts)


def paired_loss_weights(label_mask, rationale_mask, lam: float):
    """(label weights, rationale weights) reproducing α·mean_label + (1−α)·mean_rationale.

    Each mean is over all target tokens of its task in the batch (Hugging Face's
    cross-entropy with ignore_index, as in the reference `TaskPrefixTrainer`).
    """
    alpha = alpha_from_lambda(lam)
    label = label_mask * 1.0
    rationale = rationale_mask * 1.0
    return (
        _safe_divide(alpha * label, label.sum()),
        _safe_divide((1.0 - alpha) * rationale, rationale.sum()),
    )


def effective_lambda_with_token_sum(lam: float, mean_label_tokens: float, mean_rationale_tokens: float) -> float:
    """The λ a 1 : λ mixture actually optimises under one token-sum normalisation."""
    return lam * mean_rationale_tokens / mean_label_tokens


def token_mean_loss(logits, targets, loss_weights):
    """Token-mean cross-entropy of one task batch (the reference code's per-task loss)."""
    import jax.numpy as jnp
    import optax

    ce = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits, jnp.float32), targets)
    w = jnp.asarray(loss_weights, jnp.float32)
    return jnp.sum(ce * w) / jnp.sum(w)


def two_pass_paired_loss(label_logits, label_targets, label_weights, rationale_logits, rationale_targets,
                         rationale_weights, alpha: float = 0.5):
    """``alpha * L_label + (1 - alpha) * L_rationale`` from two separate forward passes."""
    return alpha * token_mean_loss(label_logits, label_targets, label_weights) + (1.0 - alpha) * token_mean_loss(
        rationale_logits, rationale_targets, rationale_weights)
