"""Train state, optimizers, learning-rate schedules and the jitted, partitioned train step.

``make_train_step`` returns ONE jitted function per step: it computes the label and the
rationale loss in a single forward pass over a batch that carries both tasks (rows or
packed segments, told apart by ``task_ids``), optionally splits the batch into
microbatches (gradient accumulation inside the step), applies the optimizer and returns
the new state plus device-side metrics.  The state is donated; parameters, optimizer
state and batches carry explicit shardings (``dss_jax.partitioning``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dss_jax import losses, partitioning
from dss_jax import model as model_lib

PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions")
SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adamw", "adafactor")


@flax.struct.dataclass
class TrainState:
    """Everything a restart needs besides the data position: step, params, optimizer state, RNG."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    rng: jnp.ndarray


# ----------------------------------------------------------------------------- schedules


def make_schedule(kind: str = "constant", learning_rate: float = 5e-5, warmup_steps: int = 0,
                  total_steps: int | None = None, end_factor: float = 0.0,
                  rsqrt_timescale: int = 10000) -> Callable[[Any], jnp.ndarray]:
    """Learning rate as a function of the optimizer step (0 for the first update).

    Linear warmup from 0 over ``warmup_steps`` (none when 0), then:
    constant; linear decay to ``learning_rate * end_factor`` at ``total_steps`` (the Hugging
    Face Trainer default the reference code uses); cosine decay to the same end value;
    rsqrt: ``learning_rate * sqrt(timescale / max(step, timescale))`` (T5X's rsqrt_decay;
    constant for the first ``rsqrt_timescale`` steps).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r} is not one of {SCHEDULES}")
    if kind in ("linear", "cosine") and not total_steps:
        raise ValueError(f"schedule {kind!r} needs total_steps")
    if warmup_steps < 0:
        raise ValueError("warmup_steps must be >= 0")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if kind == "constant":
            value = jnp.asarray(learning_rate, jnp.float32)
        elif kind == "rsqrt":
            value = learning_rate * jnp.sqrt(rsqrt_timescale / jnp.maximum(step, float(rsqrt_timescale)))
        else:
            span = max(float(total_steps - warmup_steps), 1.0)
            progress = jnp.clip((step - warmup_steps) / span, 0.0, 1.0)
            if kind == "linear":
                shape = 1.0 - progress
            else:
                shape = 0.5 * (1.0 + jnp.cos(math.pi * progress))
            value = learning_rate * (end_factor + (1.0 - end_factor) * shape)
        if warmup_steps:
            value = value * jnp.minimum(1.0, step / warmup_steps)
        return value

    return schedule


# ----------------------------------------------------------------------------- optimizers


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """An optax optimizer with its schedule and global-norm clipping.

    adamw: the reference code's optimizer (Hugging Face defaults b1 0.9, b2 0.999,
    eps 1e-8, weight decay 0, linear decay, max grad norm 1.0).
    adafactor: T5X's default (decay rate 0.8, factored second moments, no momentum,
    update clipping threshold 1.0, parameter-scale multiplication, rsqrt schedule).
    """

    name: str = "adamw"
    learning_rate: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    end_factor: float = 0.0
    rsqrt_timescale: int = 10000
    clip: float | None = 1.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    adafactor_decay_rate: float = 0.8
    adafactor_clipping_threshold: float | None = 1.0
    adafactor_factored: bool = True
    adafactor_momentum: float | None = None

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.name!r} is not one of {OPTIMIZERS}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def learning_rate_fn(self) -> Callable[[Any], jnp.ndarray]:
        return make_schedule(self.schedule, self.learning_rate, self.warmup_steps, self.total_steps,
                             self.end_factor, self.rsqrt_timescale)

    def build(self) -> optax.GradientTransformation:
        lr = self.learning_rate_fn()
        if self.name == "adamw":
            tx = optax.adamw(lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay)
        else:
            tx = optax.adafactor(
                lr,
                decay_rate=self.adafactor_decay_rate,
                clipping_threshold=self.adafactor_clipping_threshold,
                momentum=self.adafactor_momentum,
                factored=self.adafactor_factored,
                multiply_by_parameter_scale=True,
                weight_decay_rate=self.weight_decay or None,
            )
        if self.clip:
            tx = optax.chain(optax.clip_by_global_norm(self.clip), tx)
        return tx


def make_optimizer(name: str = "adamw", learning_rate: float = 5e-5, schedule: str = "constant",
                   clip: float | None = 1.0, **kwargs) -> optax.GradientTransformation:
    """``OptimizerConfig(...).build()``; see ``OptimizerConfig`` for the keyword arguments."""
    return OptimizerConfig(name=name, learning_rate=learning_rate, schedule=schedule, clip=clip, **kwargs).build()


# ----------------------------------------------------------------------------- state


def init_train_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jnp.ndarray,
                     input_shapes, params: Any | None = None) -> TrainState:
    """Step 0 state; random params unless ``params`` (e.g. from a Hugging Face checkpoint) are given.

    ``input_shapes`` are accepted for the callers' convenience; T5's parameters do not depend on them.
    """
    del input_shapes
    init_rng, state_rng = jax.random.split(rng)
    if params is None:
        params = nn.meta.unbox(model_lib.init_variables(model.config, init_rng)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      rng=state_rng)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
    """Mesh + logical-axis rules, active while tracing so activation constraints apply."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def abstract_sharded_train_state(model, optimizer, rng, input_shapes, mesh, rules, params=None):
    """The state's shapes, dtypes and shardings, with nothing allocated: enough to compile
    the train step ahead of time (``make_train_step(...).jitted.lower(abstract, batch)``).

    Returns ``(abstract_state, state_shardings)``; every leaf of ``abstract_state`` is a
    ``jax.ShapeDtypeStruct`` that carries its sharding.
    """
    init_fn = lambda r, p: init_train_state(model, optimizer, r, input_shapes, params=p)  # noqa: E731
    with sharding_context(mesh, rules):
        abstract = jax.eval_shape(init_fn, rng, params)
        shardings = partitioning.state_shardings(abstract, model, mesh, rules)
    abstract = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      abstract, shardings)
    return abstract, shardings


def create_sharded_train_state(model, optimizer, rng, input_shapes, mesh, rules, params=None):
    """Initialise the state directly into its shardings (no full copy on one device).

    Returns ``(state, state_shardings)``.
    """
    init_fn = lambda r, p: init_train_state(model, optimizer, r, input_shapes, params=p)  # noqa: E731
    _, shardings = abstract_sharded_train_state(model, optimizer, rng, input_shapes, mesh, rules, params)
    with sharding_context(mesh, rules):
        state = jax.jit(init_fn, out_shardings=shardings)(rng, params)
    return state, shardings


# ----------------------------------------------------------------------------- train step


def model_kwargs(batch: Mapping[str, jnp.ndarray]) -> dict:
    """Packing features (segment ids, positions) the model takes as keyword arguments."""
    return {name: batch[name] for name in PACKING_FEATURES if name in batch}


def _split_microbatches(tree, num_microbatches: int):
    def split(x):
        if x.shape[0] % num_microbatches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {num_microbatches} microbatches")
        return x.reshape((num_microbatches, x.shape[0] // num_microbatches) + x.shape[1:])

    return jax.tree_util.tree_map(split, tree)


def make_loss_fn(model: nn.Module, loss_config: losses.LossConfig, enable_dropout: bool = True):
    """``(params, batch, token_weights, dropout_rng) -> (loss, aux)`` for one (micro)batch."""

    def loss_fn(params, batch, weights, dropout_rng):
        logits = model.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            enable_dropout=enable_dropout,
            rngs={"dropout": dropout_rng},
            **model_kwargs(batch),
        )
        ce, z_term = losses.cross_entropy_per_token(logits, batch["decoder_target_tokens"], loss_config.z_loss)
        loss = losses.weighted_loss(ce, z_term, weights)
        task_sums, task_counts = losses.per_task_sums(ce, batch["decoder_loss_weights"], batch.get("task_ids"))
        aux = {"task_loss_sums": task_sums, "task_token_counts": task_counts, "z_loss": jnp.sum(weights * z_term)}
        return loss, aux

    return loss_fn


def train_step_fn(model: nn.Module, optimizer: optax.GradientTransformation, loss_config: losses.LossConfig,
                  enable_dropout: bool = True):
    """The un-jitted step ``(state, batch) -> (state, metrics)``."""
    loss_fn = make_loss_fn(model, loss_config, enable_dropout)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: Mapping[str, jnp.ndarray]):
        rng, dropout_rng = jax.random.split(state.rng)
        # Weights are normalised over the WHOLE batch, so microbatches add up exactly.
        weights = losses.batch_token_weights(batch, loss_config)
        if loss_config.num_microbatches == 1:
            (loss, aux), grads = grad_fn(state.params, batch, weights, dropout_rng)
        else:
            micro = _split_microbatches((dict(batch), weights), loss_config.num_microbatches)
            rngs = jax.random.split(dropout_rng, loss_config.num_microbatches)

            def accumulate(carry, xs):
                (mb, mw), r = xs
                (l, a), g = grad_fn(state.params, mb, mw, r)
                acc_loss, acc_aux, acc_grads = carry
                return (acc_loss + l, jax.tree_util.tree_map(jnp.add, acc_aux, a),
                        jax.tree_util.tree_map(jnp.add, acc_grads, g)), None

            zero_aux = {"task_loss_sums": jnp.zeros(len(losses.TASK_NAMES)),
                        "task_token_counts": jnp.zeros(len(losses.TASK_NAMES)), "z_loss": jnp.zeros(())}
            zero_grads = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            (loss, aux, grads), _ = jax.lax.scan(accumulate, (jnp.zeros(()), zero_aux, zero_grads), (micro, rngs))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        metrics = {
            "loss": loss,
            "z_loss": aux["z_loss"],
            "task_loss_sums": aux["task_loss_sums"],
            "task_token_counts": aux["task_token_counts"],
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, metrics

    return step


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, loss_config: losses.LossConfig,
                    mesh: Mesh, state_shardings: Any, batch_shardings: Mapping[str, NamedSharding],
                    rules=None, enable_dropout: bool = True):
    """The jitted, partitioned step: explicit in/out shardings, the state is donated.

    Metrics stay on device (replicated); fetch them with ``jax.device_get`` only when
    logging so that the host never waits for the device inside the loop.
    """
    rules = partitioning.logical_axis_rules() if rules is None else rules
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(
        train_step_fn(model, optimizer, loss_config, enable_dropout),
        in_shardings=(state_shardings, dict(batch_shardings)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )

    def step(state: TrainState, batch: Mapping[str, Any]):
        with sharding_context(mesh, rules):
            return jitted(state, dict(batch))

    step.jitted = jitted
    return step


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host-side floats: total loss, per-task token-mean losses, z-loss, grad norm."""
    host = jax.device_get(metrics)
    out = {"loss": float(host["loss"]), "grad_norm": float(host["grad_norm"]), "z_loss": float(host["z_loss"])}
    for i, name in enumerate(losses.TASK_NAMES):
        count = float(host["task_token_counts"][i])
        if count > 0:
            out[f"loss_{name}"] = float(host["task_loss_sums"][i]) / count
    return out


def is_finite_loss(metrics: Mapping[str, Any]) -> bool:
    return math.isfinite(float(jax.device_get(metrics["loss"])))
