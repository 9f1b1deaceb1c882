"""Compile-only memory and throughput plan of a training run, and of its evaluation decode,
on N (simulated) devices: ``python -m dss_jax.plan``.

    python -m dss_jax.plan --gin_file=dss_cqa_xxl.gin --devices=64 --chip=v4
    python -m dss_jax.plan --model=t5_1_1_xxl --devices=64 --mesh=data:8,model:8 --chip=v4 --remat=full
    python -m dss_jax.plan --gin_file=dss_cqa_large.gin --devices=8 --chip=h100 \
        --gin.InputConfig.batch_size=32 --gin.OptimizerConfig.name="'adafactor'"

The plan reads the run from the same configuration objects as the run: gin builds the
``Experiment`` and ``RunConfig`` that the ``train`` entrypoint would receive (``--gin_file``
and ``--gin.NAME=VALUE`` as for ``python -m dss_jax.train``; with only ``--model=NAME`` it
is ``runs/finetune.gin`` + ``models/NAME.gin``, i.e. every default of
``dss_jax/experiment.py``).  From them come the model, the optimizer, the loss
(``Experiment.loss_config()``: ``paired`` by default), the input layout (batch size,
sequence lengths, packing mode, two rows per example in paired mode), the mesh and FSDP,
and the evaluation decode (``EvalConfig.batch_size``, ``max_decode_len``).  The flags
``--mesh``, ``--fsdp``, ``--remat``, ``--dtype`` and ``--model`` are what-ifs over them.

Nothing is allocated and nothing runs: the CPU is split into N simulated devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``; the process re-executes itself
when JAX was already started with another device count), the model config is resolved for
the chip's backend (``dss_jax.hardware``), the train state is built with
``jax.eval_shape``, and the trainer's partitioned train step
(``dss_jax.trainer.make_train_step`` with ``dss_jax.partitioning``'s shardings) and the
sharded greedy decode (``dss_jax.decoding.lower_sharded_greedy_decode``) are lowered and
compiled for the simulated mesh.  The report gives, per device:

* parameters and optimizer state (exact, from the shardings);
* activations and temporaries (``compiled.memory_analysis().temp_size_in_bytes``; XLA's
  CPU compiler, so an estimate of what the TPU/GPU compiler will assign);
* FLOPs per step: XLA's cost analysis of the step with the layers unrolled (the compiled
  step scans the layers, and XLA counts a loop body once, not once per layer), next to
  the analytic ``6*N*T`` and an encoder/decoder-aware model-FLOPs count;
* a roofline step time on the chosen chip (peak bf16 FLOP/s and HBM bandwidth;
  communication not modelled) and the MFU that step time would give;
* the decode step: the decode weights, temporaries (key/value caches included) and a
  roofline time per eval batch (every decoded token reads the weights and temporaries once).

A plan that does not fit the chip's memory exits with status 3 and says what to change;
bad settings exit with status 2 and a message naming them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from typing import Any, Mapping, Sequence

GIB = 1024**3
EXIT_DOES_NOT_FIT = 3
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Faster CPU code generation for compile-only use; buffer assignment (the memory numbers)
# comes from XLA's HLO passes, which these flags do not change.
FAST_CPU_CODEGEN_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
REEXEC_MARKER = "DSS_PLAN_REEXECUTED"
# gin requires MODEL_DIR; the plan writes nothing there.
UNUSED_MODEL_DIR = "MODEL_DIR = 'unused-by-dss_jax.plan'"


@dataclasses.dataclass(frozen=True)
class Chip:
    """Vendor spec sheet numbers of one accelerator chip."""

    name: str
    backend: str  # what dss_jax.hardware resolves the model's hardware choices for
    peak_bf16_tflops: float  # dense bf16 matmul peak
    hbm_gib: float
    hbm_gb_per_s: float
    source: str


# Vendor specifications: Google Cloud TPU system-architecture pages (v4, v5p, v5e) and
# NVIDIA data sheets (A100 80GB SXM, H100 SXM, H200 SXM); bf16 peaks are dense (no sparsity).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", "tpu", 275.0, 32.0, 1200.0, "cloud.google.com/tpu/docs/v4"),
    "v5p": Chip("TPU v5p", "tpu", 459.0, 95.0, 2765.0, "cloud.google.com/tpu/docs/v5p"),
    "v5e": Chip("TPU v5e", "tpu", 197.0, 16.0, 819.0, "cloud.google.com/tpu/docs/v5e"),
    "a100": Chip("NVIDIA A100 80GB SXM", "gpu", 312.0, 80.0, 2039.0, "NVIDIA A100 data sheet"),
    "h100": Chip("NVIDIA H100 SXM", "gpu", 989.0, 80.0, 3350.0, "NVIDIA H100 data sheet"),
    "h200": Chip("NVIDIA H200 SXM", "gpu", 989.0, 141.0, 4800.0, "NVIDIA H200 data sheet"),
}


class PlanError(ValueError):
    """Bad plan arguments (mesh does not match devices, unknown chip, ...)."""

# ----------------------------------------------------------------------------- arguments


def parse_mesh(text: str) -> dict[str, int]:
    """``"data:8,model:4"`` -> ``{"data": 8, "model": 4}`` (both axes; -1 = the rest)."""
    axes: dict[str, int] = {}
    for part in text.split(","):
        match = re.fullmatch(r"\s*(data|model)\s*:\s*(-1|\d+)\s*", part)
        if not match:
            raise PlanError(f"--mesh: {part!r} is not 'data:N' or 'model:N'")
        axes[match.group(1)] = int(match.group(2))
    axes.setdefault("data", -1)
    axes.setdefault("model", 1)
    return axes


def resolve_mesh(axes: Mapping[str, int], devices: int) -> tuple[int, int]:
    """(data, model) sizes whose product is ``devices``."""
    data, model = axes["data"], axes["model"]
    if data == -1 and model == -1:
        raise PlanError("--mesh: at most one axis may be -1")
    if data == -1:
        data = devices // model if model and devices % model == 0 else 0
    if model == -1:
        model = devices // data if data and devices % data == 0 else 0
    if data < 1 or model < 1 or data * model != devices:
        raise PlanError(f"--mesh {dict(axes)} does not divide {devices} devices into data x model")
    return data, model


@dataclasses.dataclass(frozen=True)
class PlanSpec:
    """Everything the plan compiles for (built from an Experiment and a RunConfig: ``spec_from_configs``)."""

    model_name: str  # for the report
    model_config: Any  # dss_jax.configs.T5Config, hardware resolved for the chip (scan_layers set by the plan)
    devices: int
    data: int
    model_parallel: int
    fsdp: bool
    chip: Chip
    batch: int  # rows of the global training batch
    input_length: int
    target_length: int
    optimizer: Any  # dss_jax.trainer.OptimizerConfig
    loss: Any  # dss_jax.losses.LossConfig
    pack: Any = False  # False | True | "buckets"
    examples: int = 0  # InputConfig.batch_size
    eval_batch: int = 0  # EvalConfig.batch_size (0: no decode plan)
    eval_input_length: int = 0
    max_decode_len: int = 0

    @property
    def microbatches(self) -> int:
        return self.loss.num_microbatches

# ----------------------------------------------------------------------------- devices


def xla_flags_with_devices(existing: str, devices: int) -> str:
    """``XLA_FLAGS`` with the simulated device count set to ``devices`` (and fast CPU codegen)."""
    kept = [f for f in existing.split() if not f.startswith(DEVICE_COUNT_FLAG)]
    for flag in FAST_CPU_CODEGEN_FLAGS:
        if not any(f.split("=")[0] == flag.split("=")[0] for f in kept):
            kept.append(flag)
    return " ".join([f"{DEVICE_COUNT_FLAG}={devices}", *kept])


def ensure_simulated_devices(devices: int, argv: Sequence[str]) -> None:
    """Make JAX see ``devices`` CPU devices; re-execute this program if it cannot.

    The device count is read when the CPU backend starts.  Setting ``XLA_FLAGS`` is
    enough while no backend exists yet (``import jax`` alone does not start one);
    otherwise the plan runs again in a fresh process with the flag set.
    """
    os.environ["XLA_FLAGS"] = xla_flags_with_devices(os.environ.get("XLA_FLAGS", ""), devices)
    os.environ["JAX_PLATFORMS"] = "cpu"
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        return
    import jax

    if jax.device_count() == devices and jax.default_backend() == "cpu":
        return
    if os.environ.get(REEXEC_MARKER):
        raise PlanError(f"could not get {devices} simulated devices (have {jax.device_count()})")
    os.environ[REEXEC_MARKER] = "1"
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "dss_jax.plan", *argv])


# ----------------------------------------------------------------------------- pieces


def feature_specs(batch: int, input_length: int, target_length: int, pack: bool) -> dict[str, tuple]:
    """Feature name -> (shape, dtype name) of one global training batch."""
    specs = {
        "encoder_input_tokens": ((batch, input_length), "int32"),
        "decoder_input_tokens": ((batch, target_length), "int32"),
        "decoder_target_tokens": ((batch, target_length), "int32"),
        "decoder_loss_weights": ((batch, target_length), "float32"),
        "task_ids": ((batch, target_length), "int32"),
    }
    if pack:
        specs.update({
            "encoder_segment_ids": ((batch, input_length), "int32"),
            "encoder_positions": ((batch, input_length), "int32"),
            "decoder_segment_ids": ((batch, target_length), "int32"),
            "decoder_positions": ((batch, target_length), "int32"),
        })
    return specs


def per_device_bytes(abstract_tree: Any, shardings: Any) -> int:
    """Bytes one device holds of a tree of arrays laid out by ``shardings``."""
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves(abstract_tree)
    shard_leaves = jax.tree_util.tree_leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    if len(leaves) != len(shard_leaves):
        raise ValueError("tree and shardings differ in structure")
    total = 0
    for leaf, sharding in zip(leaves, shard_leaves):
        shard_shape = sharding.shard_shape(tuple(leaf.shape))
        total += int(np.prod(shard_shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def _tree_size(tree: Any) -> int:
    """Number of elements of the arrays of an (abstract) tree."""
    import jax
    import numpy as np

    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(tree)))


def _encoder_decoder_params(config, params: Mapping[str, Any]) -> tuple[int, int]:
    """Parameters the encoder's and the decoder's tokens multiply by (the decoder's include the
    output layer, also when it is the tied embedding)."""
    n_dec = _tree_size(params["decoder"])
    if config.tie_word_embeddings:
        n_dec += config.vocab_size * config.d_model
    return _tree_size(params["encoder"]), n_dec


def analytic_flops(config, params: Mapping[str, Any], batch: int, input_length: int,
                   target_length: int) -> dict[str, float]:
    """Analytic training FLOPs per step (forward + backward = 3x forward).

    ``six_n_t``: the common ``6 * N * T`` with N all parameters and T = batch x (input +
    target) tokens; for an encoder-decoder it over-counts, since encoder weights only see
    input tokens and decoder weights only target tokens.
    ``model``: ``6 * (N_enc * T_in + N_dec * T_tgt)`` (N_dec includes the output layer; the
    embedding lookup is free) plus attention scores and weighted sums
    (``12 * B * L * T_q * T_k * heads * d_kv`` per attention kind).  MFU uses this one.
    """
    n_total = _tree_size(params)
    n_enc, n_dec = _encoder_decoder_params(config, params)
    tokens_in, tokens_tgt = batch * input_length, batch * target_length
    inner = config.num_heads * config.d_kv
    attention = 12 * batch * inner * (
        config.num_encoder_layers * input_length * input_length
        + config.num_decoder_layers * (target_length * target_length + target_length * input_length))
    return {
        "params": float(n_total),
        "six_n_t": 6.0 * n_total * (tokens_in + tokens_tgt),
        "model": 6.0 * (n_enc * tokens_in + n_dec * tokens_tgt) + attention,
    }


@dataclasses.dataclass
class DecodePlan:
    """The evaluation decode (greedy, sharded like training) of one eval batch."""

    batch: int
    input_length: int
    max_decode_len: int
    weight_bytes: int  # decode weights per device (the parameters, or their prepared copies)
    temp_bytes: int  # temporaries per device, key/value caches included
    output_bytes: int
    encoder_flops: float  # per device: 2 x encoder parameters x input tokens
    token_flops: float  # per device and decoded token: 2 x decoder parameters (output layer incl.) x batch
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.temp_bytes + self.output_bytes

    def time(self, chip: Chip) -> dict[str, float]:
        """Roofline: the encoder at peak, then per token the larger of compute at peak and
        one read of the weights and temporaries from HBM; communication not modelled."""
        peak, bandwidth = chip.peak_bf16_tflops * 1e12, chip.hbm_gb_per_s * 1e9
        encoder = self.encoder_flops / peak
        token = max(self.token_flops / peak, (self.weight_bytes + self.temp_bytes) / bandwidth)
        batch = encoder + self.max_decode_len * token
        return {"encoder_s": encoder, "token_s": token, "batch_s": batch, "sequences_per_s": self.batch / batch}


@dataclasses.dataclass
class PlanResult:
    spec: PlanSpec
    params: float
    param_bytes: int
    optimizer_bytes: int
    global_state_bytes: int  # parameters + optimizer state of the whole model, unsharded
    batch_bytes: int
    temp_bytes: int
    output_extra_bytes: int  # outputs not aliased to donated inputs (metrics, ...)
    compiled_flops_per_device: float
    analytic: dict
    compile_seconds: float
    refused_before_compile: bool = False
    decode: DecodePlan | None = None

    @property
    def state_bytes(self) -> int:
        return self.param_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.batch_bytes + self.temp_bytes + self.output_extra_bytes

    @property
    def capacity_bytes(self) -> float:
        return self.spec.chip.hbm_gib * GIB

    @property
    def fits(self) -> bool:
        decode_fits = self.decode is None or self.decode.total_bytes <= self.capacity_bytes
        return self.total_bytes <= self.capacity_bytes and decode_fits

    def step_time(self) -> dict[str, float]:
        """Roofline: compute at peak vs. minimal HBM traffic (state read+written, temporaries written+read)."""
        chip = self.spec.chip
        compute = self.compiled_flops_per_device / (chip.peak_bf16_tflops * 1e12)
        traffic = 2 * self.state_bytes + 2 * self.temp_bytes
        memory = traffic / (chip.hbm_gb_per_s * 1e9)
        step = max(compute, memory)
        model_flops_per_device = self.analytic["model"] / self.spec.devices
        mfu = model_flops_per_device / (step * chip.peak_bf16_tflops * 1e12) if step > 0 else 0.0
        return {"compute_s": compute, "memory_s": memory, "step_s": step, "mfu": mfu}


def suggestions(result: PlanResult) -> list[str]:
    """What would make a plan that does not fit the chip's memory fit."""
    spec = result.spec
    smaller_state = ("--gin.OptimizerConfig.name=\"'adafactor'\": factored second moments, no first moment "
                     "(T5X's default)")
    fully_sharded = result.global_state_bytes / spec.devices
    if fully_sharded > result.capacity_bytes:
        tips = [f"even split over all {spec.devices} devices, parameters + optimizer state need "
                f"{_gib(fully_sharded).strip()} per device: use more devices (--devices) or a chip with "
                "more HBM (--chip)"]
        if spec.optimizer.name == "adamw":
            tips.append(smaller_state)
        return tips
    tips = []
    if result.state_bytes > 0.5 * result.capacity_bytes or result.refused_before_compile:
        if spec.model_parallel < spec.devices:
            model = min(spec.model_parallel * 2, spec.devices)
            tips.append(f"more model parallelism, e.g. --mesh=data:{spec.devices // model},model:{model} "
                        "(parameters and optimizer state are split over the model axis)")
        if not spec.fsdp and spec.data > 1:
            tips.append("--fsdp: also split parameters and optimizer state over the data axis")
        if spec.optimizer.name == "adamw":
            tips.append(smaller_state)
    if result.temp_bytes > 0.25 * result.capacity_bytes or not tips:
        if spec.model_config.remat_policy != "full":
            tips.append("--remat=full: recompute activations in the backward pass instead of storing them")
        tips.append("--gin.Experiment.num_microbatches=K: accumulate gradients over K smaller pieces of the batch")
        tips.append("a smaller InputConfig.batch_size or shorter InputConfig.sequence_lengths")
    if result.decode is not None and result.decode.total_bytes > result.capacity_bytes:
        tips.append("a smaller EvalConfig.batch_size or EvalConfig.max_decode_len: the evaluation decode "
                    "does not fit")
    return tips


def _mesh_and_rules(spec: PlanSpec):
    from dss_jax import partitioning

    return (partitioning.make_mesh(data=spec.data, model=spec.model_parallel),
            partitioning.logical_axis_rules(fsdp=spec.fsdp))


def _abstract_state(spec: PlanSpec, model_config):
    """(model, optimizer, mesh, rules, abstract state with shardings, state shardings)."""
    import jax

    from dss_jax import trainer
    from dss_jax.model import T5

    model = T5(model_config)
    optimizer = spec.optimizer.build()
    mesh, rules = _mesh_and_rules(spec)
    shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
    abstract, shardings = trainer.abstract_sharded_train_state(model, optimizer, jax.random.PRNGKey(0), shapes,
                                                               mesh, rules)
    return model, optimizer, mesh, rules, abstract, shardings


def _lower_step(spec: PlanSpec, model_config):
    """The lowered (not yet compiled) train step, and the abstract batch and its shardings."""
    import jax
    import jax.numpy as jnp

    from dss_jax import partitioning, trainer

    model, optimizer, mesh, rules, abstract, shardings = _abstract_state(spec, model_config)
    features = feature_specs(spec.batch, spec.input_length, spec.target_length, bool(spec.pack))
    batch_shardings = partitioning.batch_shardings(mesh, list(features))
    batch = {name: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_shardings[name])
             for name, (shape, dtype) in features.items()}
    step = trainer.make_train_step(model, optimizer, spec.loss, mesh, shardings, batch_shardings, rules)
    with trainer.sharding_context(mesh, rules):
        lowered = step.jitted.lower(abstract, batch)
    return lowered, batch, batch_shardings


def plan_decode(spec: PlanSpec, model_config, params: Any) -> DecodePlan:
    """Compile the sharded greedy decode of one eval batch (``dss_jax.decoding``) and measure it."""
    from dss_jax import decoding

    mesh, rules = _mesh_and_rules(spec)
    start = time.perf_counter()
    compiled = decoding.lower_sharded_greedy_decode(model_config, spec.max_decode_len, mesh, rules,
                                                    spec.eval_batch, spec.eval_input_length).compile()
    memory = compiled.memory_analysis()
    weights = decoding.abstract_decode_weights(model_config, mesh, rules)
    import jax

    weight_bytes = per_device_bytes(weights, jax.tree_util.tree_map(lambda leaf: leaf.sharding, weights))
    n_enc, n_dec = _encoder_decoder_params(model_config, params)
    return DecodePlan(
        batch=spec.eval_batch, input_length=spec.eval_input_length, max_decode_len=spec.max_decode_len,
        weight_bytes=weight_bytes, temp_bytes=int(memory.temp_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        encoder_flops=2.0 * n_enc * spec.eval_batch * spec.eval_input_length / spec.devices,
        token_flops=2.0 * n_dec * spec.eval_batch / spec.devices, compile_seconds=time.perf_counter() - start)


def run_plan(spec: PlanSpec, log=lambda msg: None) -> PlanResult:
    """Build, lower and compile the step (and the decode) for ``spec``; refuse early when the
    state alone cannot fit."""
    import jax

    scanned = spec.model_config.replace(scan_layers=True)
    _, _, _, _, abstract, shardings = _abstract_state(spec, scanned)
    param_bytes = per_device_bytes(abstract.params, shardings.params)
    optimizer_bytes = per_device_bytes(abstract.opt_state, shardings.opt_state)
    analytic = analytic_flops(scanned, abstract.params, spec.batch, spec.input_length, spec.target_length)
    global_state_bytes = sum(int(leaf.size) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(
        (abstract.params, abstract.opt_state)))
    result = PlanResult(spec=spec, params=analytic["params"], param_bytes=param_bytes, optimizer_bytes=optimizer_bytes,
                        global_state_bytes=global_state_bytes,
                        batch_bytes=0, temp_bytes=0, output_extra_bytes=0, compiled_flops_per_device=0.0,
                        analytic=analytic, compile_seconds=0.0)
    if result.state_bytes > result.capacity_bytes:
        result.refused_before_compile = True
        return result

    start = time.perf_counter()
    log(f"lowering and compiling the train step ({spec.loss.mode} loss, layers scanned) ...")
    lowered, batch, batch_shardings = _lower_step(spec, scanned)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    result.compile_seconds = time.perf_counter() - start
    result.batch_bytes = per_device_bytes(batch, batch_shardings)
    result.temp_bytes = int(memory.temp_size_in_bytes)
    result.output_extra_bytes = max(int(memory.output_size_in_bytes) - int(memory.alias_size_in_bytes), 0)

    log("counting FLOPs on the step with unrolled layers (lowering only) ...")
    unrolled_lowered = _lower_step(spec, spec.model_config.replace(scan_layers=False))[0]
    cost = unrolled_lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    result.compiled_flops_per_device = float(cost["flops"]) / spec.devices
    if spec.eval_batch:
        log(f"lowering and compiling the evaluation decode (batch {spec.eval_batch}, "
            f"{spec.max_decode_len} tokens, layers scanned) ...")
        result.decode = plan_decode(spec, scanned, abstract.params)
    return result


# ----------------------------------------------------------------------------- report


def _gib(n: float) -> str:
    if n < GIB:
        return f"{n / 1024**2:8.2f} MiB"
    return f"{n / GIB:8.2f} GiB"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _layout(spec: PlanSpec) -> str:
    if spec.pack == "buckets":
        return (f" (bucketed packing of {spec.examples} examples: planned at the largest step, one sequence "
                "per row at the longest row lengths)")
    return " packed (SeqIO)" if spec.pack else ""


def _decode_lines(decode: DecodePlan, chip: Chip, fsdp: bool) -> list[str]:
    timing = decode.time(chip)
    gathers = " (FSDP: the weights are also split over data, so every step gathers them: not modelled)" \
        if fsdp else ""
    return [
        f"evaluation decode: batch {decode.batch} x inputs {decode.input_length}, greedy, "
        f"{decode.max_decode_len} new tokens (sharded like training), per device:",
        f"  decode weights        {_gib(decode.weight_bytes)}",
        f"  temps (kv caches)     {_gib(decode.temp_bytes)}",
        f"  total                 {_gib(decode.total_bytes)}  of {chip.hbm_gib:.0f} GiB HBM "
        f"({100 * decode.total_bytes / (chip.hbm_gib * GIB):.0f}%)",
        f"  roofline: encoder {_seconds(timing['encoder_s'])}, {_seconds(timing['token_s'])} per token -> "
        f"batch >= {_seconds(timing['batch_s'])}, <= {timing['sequences_per_s']:.3g} sequences/s{gathers}",
        f"  compile (CPU, simulated mesh) {decode.compile_seconds:.0f} s",
    ]


def format_report(result: PlanResult) -> str:
    spec = result.spec
    chip = spec.chip
    lines = [
        f"plan: {spec.model_name} ({_count(result.params)} params) on {spec.devices} x {chip.name}, "
        f"mesh data={spec.data} x model={spec.model_parallel}, fsdp={'on' if spec.fsdp else 'off'}, "
        f"remat={spec.model_config.remat_policy}, optimizer={spec.optimizer.name}",
        f"batch {spec.batch} x (inputs {spec.input_length} + targets {spec.target_length}){_layout(spec)}, "
        f"microbatches {spec.microbatches}, activations {spec.model_config.dtype}",
        f"loss {spec.loss.mode} (alpha {spec.loss.alpha:g}, z_loss {spec.loss.z_loss:g})",
        "per device:",
        f"  parameters            {_gib(result.param_bytes)}",
        f"  optimizer state       {_gib(result.optimizer_bytes)}",
    ]
    if result.refused_before_compile:
        lines.append(f"  (not compiled: parameters + optimizer state alone exceed the {chip.hbm_gib:.0f} GiB of HBM)")
    else:
        time_model = result.step_time()
        lines += [
            f"  batch                 {_gib(result.batch_bytes)}",
            f"  activations/temps     {_gib(result.temp_bytes)}",
            f"  other outputs         {_gib(result.output_extra_bytes)}",
            f"  total                 {_gib(result.total_bytes)}  of {chip.hbm_gib:.0f} GiB HBM "
            f"({100 * result.total_bytes / result.capacity_bytes:.0f}%)",
            f"  flops/step (XLA)      {result.compiled_flops_per_device:.3e}",
            f"  flops/step (6*N*T)    {result.analytic['six_n_t'] / spec.devices:.3e}",
            f"  flops/step (model)    {result.analytic['model'] / spec.devices:.3e}",
            f"roofline on {chip.name} ({chip.peak_bf16_tflops:.0f} TFLOP/s bf16, {chip.hbm_gb_per_s:.0f} GB/s; "
            f"communication not modelled):",
            f"  compute {_seconds(time_model['compute_s'])}, HBM {_seconds(time_model['memory_s'])} -> "
            f"step >= {_seconds(time_model['step_s'])}, MFU <= {100 * time_model['mfu']:.0f}%",
            f"  compile (CPU, simulated mesh) {result.compile_seconds:.0f} s",
        ]
        if result.decode is not None:
            lines += _decode_lines(result.decode, chip, spec.fsdp)
    if result.fits and not result.refused_before_compile:
        lines.append("FITS")
    else:
        need = "parameters + optimizer state alone need" if result.refused_before_compile else "needs"
        lines.append(f"DOES NOT FIT: {need} {_gib(result.total_bytes).strip()} per device > {chip.hbm_gib:.0f} GiB "
                     f"of {chip.name} HBM. Try:")
        lines += [f"  - {tip}" for tip in suggestions(result)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- configuration


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dss_jax.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, required=True, help="number of (simulated) devices = chips")
    parser.add_argument("--chip", default="v4", choices=sorted(CHIPS))
    parser.add_argument("--model", help="named T5 config: without --gin_file, plan runs/finetune.gin + "
                        "models/NAME.gin; with it, replace the gin file's model")
    parser.add_argument("--mesh", help="what-if over MeshConfig.shape, e.g. data:8,model:4 (-1: the rest)")
    parser.add_argument("--fsdp", action="store_true", help="what-if: MeshConfig.fsdp = True")
    parser.add_argument("--remat", choices=["none", "full", "minimal"], help="what-if over the model's remat_policy")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="what-if over the model's activation dtype")
    return parser


def gin_sources(args: argparse.Namespace, bindings: Sequence[str]) -> tuple[list[str], list[str]]:
    """The gin files and bindings the plan parses (the run's own, and ``--model``)."""
    files, extra = list(args.gin_file), []
    if not files:
        if not args.model:
            raise PlanError("give the run's --gin_file (as for python -m dss_jax.train), or --model=NAME")
        files = ["runs/finetune.gin", f"models/{args.model}.gin"]
    elif args.model:
        extra.append(f"model_config.name = '{args.model}'")
    return files, [UNUSED_MODEL_DIR, *extra, *bindings]


def configs_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str] = ()):
    """(Experiment, RunConfig) exactly as gin hands them to the ``train`` entrypoint."""
    import gin

    from dss_jax import experiment as experiment_lib
    from dss_jax import gin_utils

    gin_utils.parse_gin(gin_files, gin_bindings, search_paths)
    gin_utils.check_configuration(unused_required=("MODEL_DIR",))  # a plan needs no run directory
    bound = gin.get_bindings(gin_utils.train_settings)  # references evaluated: the objects the trainer receives
    if not isinstance(bound.get("experiment"), experiment_lib.Experiment):
        raise PlanError("the gin files bind no train.experiment (include runs/finetune.gin)")
    run = bound.get("run") or experiment_lib.RunConfig()
    return experiment_lib.with_total_steps(bound["experiment"], run.train.steps), run


def training_batch_shape(experiment, kind: str) -> tuple[int, int, int]:
    """(rows, input length, target length) of the largest global training batch of the run."""
    lengths = experiment.input.sequence_lengths
    pairs = 2 if kind == "paired" else 1
    if experiment.input.pack == "buckets":  # at most one sequence per row, at the longest row lengths
        rows = pairs * experiment.input.batch_size
        return (rows, max(experiment.input.encoder_row_lens or (lengths["inputs"],)),
                max(experiment.input.decoder_row_lens or (lengths["targets"],)))
    rows = experiment.input.batch_size * (1 if experiment.input.pack else pairs)
    return rows, lengths["inputs"], lengths["targets"]


def spec_from_configs(experiment, run, args: argparse.Namespace, model_name: str) -> PlanSpec:
    """The plan of this experiment and run on ``args.devices`` chips, with the flags' what-ifs."""
    from dss_jax import hardware

    chip = CHIPS[args.chip]
    model_config = experiment.model
    if args.dtype:
        model_config = model_config.replace(dtype=args.dtype)
    if args.remat:
        model_config = model_config.replace(remat_policy=args.remat)
    model_config = hardware.resolve(model_config, backend=chip.backend, num_devices=args.devices)
    shape = parse_mesh(args.mesh) if args.mesh else {"data": run.mesh.shape[0], "model": run.mesh.shape[1]}
    data, model_parallel = resolve_mesh(shape, args.devices)
    tasks = experiment.tasks()
    rows, input_length, target_length = training_batch_shape(experiment, tasks.kind)
    if rows % data:
        raise PlanError(f"the global batch of {rows} rows (InputConfig.batch_size = {experiment.input.batch_size}, "
                        f"{tasks.kind}) is not divisible by the data axis ({data})")
    if run.eval.batch_size % data:
        raise PlanError(f"EvalConfig.batch_size = {run.eval.batch_size} is not divisible by the data axis ({data})")
    return PlanSpec(
        model_name=model_name, model_config=model_config, devices=args.devices, data=data,
        model_parallel=model_parallel, fsdp=args.fsdp or run.mesh.fsdp, chip=chip, batch=rows,
        input_length=input_length, target_length=target_length, optimizer=experiment.optimizer,
        loss=experiment.loss_config(), pack=experiment.input.pack, examples=experiment.input.batch_size,
        eval_batch=run.eval.batch_size, eval_input_length=experiment.input.sequence_lengths["inputs"],
        max_decode_len=run.eval.max_decode_len)


def _model_name(experiment) -> str:
    import gin

    try:
        return str(gin.query_parameter("model_config.name"))
    except ValueError:
        return f"gin model_config (d_model {experiment.model.d_model})"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    from dss_jax import gin_utils

    gin_utils.add_gin_flags(parser)
    rest, shorthand = gin_utils.rewrite_gin_args(argv)
    args = parser.parse_args(rest)
    try:
        ensure_simulated_devices(args.devices, argv)
        files, bindings = gin_sources(args, list(args.gin_bindings) + shorthand)
        experiment, run = configs_from_gin(files, bindings, [p for p in args.gin_search_paths.split(",") if p])
        spec = spec_from_configs(experiment, run, args, _model_name(experiment))
        result = run_plan(spec, log=lambda msg: print(f"# {msg}", file=sys.stderr, flush=True))
    except (PlanError, FileNotFoundError, *gin_utils.user_errors()) as e:
        print(f"python -m dss_jax.plan: error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0 if result.fits and not result.refused_before_compile else EXIT_DOES_NOT_FIT
