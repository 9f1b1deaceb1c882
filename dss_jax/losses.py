"""Loss functions of distilling step-by-step, as pure functions of logits and batch features.

Every objective is written as a weighted token sum ``sum_t w_t * CE_t`` with per-token
weights computed from the batch, so that all of them run in ONE forward pass over a
batch that holds label and rationale sequences side by side (rows or packed segments):

* ``token_mean``   -- plain T5X normalisation: every non-pad target token counts equally.
* ``per_sequence`` -- mixture mode: each target sequence's token-mean counts once, then
  the mean over sequences.  With mixture rates 1 : lambda the expected objective is
  proportional to ``L_label + lambda * L_rationale`` (METHOD.md).
* ``paired``       -- the reference objective ``alpha * L_label + (1 - alpha) * L_rationale``
  with each term the token-mean over its own task's tokens in the batch
  (``alpha = 1 / (1 + lambda)``).

Feature names follow SeqIO's encoder-decoder layout: ``decoder_target_tokens``,
``decoder_loss_weights``, ``decoder_segment_ids`` (packed only) and ``task_ids``
(0 = label, 1 = rationale, per target token).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

LABEL_TASK_ID = 0
RATIONALE_TASK_ID = 1
TASK_NAMES = ("label", "rationale")
LOSS_MODES = ("token_mean", "per_sequence", "paired")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How the per-token cross-entropy is weighted and what is added to it.

    mode: one of ``LOSS_MODES``.
    alpha: weight of the label task in ``paired`` mode (``1 / (1 + lambda)``).
    z_loss: coefficient of the auxiliary ``log(Z)^2`` term (T5X uses 1e-4; 0 disables).
    num_microbatches: gradient accumulation: the batch is split into this many pieces
      that run one after another inside the same jitted step.
    """

    mode: str = "paired"
    alpha: float = 0.5
    z_loss: float = 0.0
    num_microbatches: int = 1

    def __post_init__(self):
        if self.mode not in LOSS_MODES:
            raise ValueError(f"loss mode {self.mode!r} is not one of {LOSS_MODES}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.z_loss < 0:
            raise ValueError(f"z_loss must be >= 0, got {self.z_loss}")
        if self.num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {self.num_microbatches}")

    @classmethod
    def from_lambda(cls, mode: str, lam: float, **kwargs) -> "LossConfig":
        """``alpha = 1 / (1 + lambda)``: the paper's ``L_label + lambda * L_rationale``, rescaled."""
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        return cls(mode=mode, alpha=1.0 / (1.0 + lam), **kwargs)


def cross_entropy_per_token(logits: jnp.ndarray, targets: jnp.ndarray, z_loss: float = 0.0):
    """Per-token cross-entropy ``[B, T]`` and z-loss term ``z_loss * logsumexp(logits)^2``."""
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if z_loss:
        log_z = jax.nn.logsumexp(logits, axis=-1)
        z_term = z_loss * jnp.square(log_z)
    else:
        z_term = jnp.zeros_like(ce)
    return ce, z_term


def _safe_reciprocal(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.where(x > 0, 1.0 / jnp.maximum(x, 1e-30), 0.0)


def sequence_ids(loss_weights: jnp.ndarray, segment_ids: jnp.ndarray | None) -> jnp.ndarray:
    """Segment id per target token (1 for every real token of an unpacked row, 0 for pad)."""
    if segment_ids is None:
        return (loss_weights > 0).astype(jnp.int32)
    return segment_ids.astype(jnp.int32)


def tokens_in_same_sequence(loss_weights: jnp.ndarray, segment_ids: jnp.ndarray | None) -> jnp.ndarray:
    """For each token, the weighted number of target tokens of its own sequence (row, segment)."""
    seg = sequence_ids(loss_weights, segment_ids)
    same = seg[:, :, None] == seg[:, None, :]  # [B, T, T]
    return jnp.einsum("btu,bu->bt", same.astype(jnp.float32), loss_weights.astype(jnp.float32))


def token_weights(
    mode: str,
    loss_weights: jnp.ndarray,
    task_ids: jnp.ndarray | None = None,
    segment_ids: jnp.ndarray | None = None,
    alpha: float = 0.5,
) -> jnp.ndarray:
    """Per-token weights ``w`` such that the objective is ``sum(w * CE)`` over the batch."""
    w = loss_weights.astype(jnp.float32)
    if mode == "token_mean":
        return w * _safe_reciprocal(jnp.sum(w))
    if mode == "per_sequence":
        per_sequence = w * _safe_reciprocal(tokens_in_same_sequence(w, segment_ids))
        num_sequences = jnp.sum(per_sequence)  # each sequence's tokens sum to exactly 1
        return per_sequence * _safe_reciprocal(num_sequences)
    if mode == "paired":
        if task_ids is None:
            raise ValueError("paired loss needs task_ids (0 label, 1 rationale) per target token")
        is_label = (task_ids == LABEL_TASK_ID).astype(jnp.float32) * w
        is_rationale = (task_ids == RATIONALE_TASK_ID).astype(jnp.float32) * w
        return alpha * is_label * _safe_reciprocal(jnp.sum(is_label)) + (1.0 - alpha) * is_rationale * _safe_reciprocal(
            jnp.sum(is_rationale)
        )
    raise ValueError(f"loss mode {mode!r} is not one of {LOSS_MODES}")


def batch_token_weights(batch: Mapping[str, jnp.ndarray], config: LossConfig) -> jnp.ndarray:
    """``token_weights`` from a batch dict in SeqIO's encoder-decoder layout."""
    return token_weights(
        config.mode,
        batch["decoder_loss_weights"],
        batch.get("task_ids"),
        batch.get("decoder_segment_ids"),
        config.alpha,
    )


def weighted_loss(ce: jnp.ndarray, z_term: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """The objective: ``sum(w * (CE + z))``."""
    return jnp.sum(weights * (ce + z_term))


def per_task_sums(ce: jnp.ndarray, loss_weights: jnp.ndarray, task_ids: jnp.ndarray | None):
    """Summed CE and token counts per task (label, rationale), for per-task loss metrics."""
    w = loss_weights.astype(jnp.float32)
    if task_ids is None:
        task_ids = jnp.zeros(ce.shape, jnp.int32)
    sums, counts = [], []
    for task_id in range(len(TASK_NAMES)):
        mask = (task_ids == task_id).astype(jnp.float32) * w
        sums.append(jnp.sum(mask * ce))
        counts.append(jnp.sum(mask))
    return jnp.stack(sums), jnp.stack(counts)
