"""Compile-only memory and throughput plan of a training run on N (simulated) devices.

    python -m dss_jax.plan --model=t5_1_1_xxl --devices=64 --mesh=data:8,model:8 --chip=v4 \
        [--fsdp] [--remat=none|full|minimal] [--batch=64] [--input_length=1024] \
        [--target_length=256] [--optimizer=adamw|adafactor] [--microbatches=1] [--pack]
    python -m dss_jax.plan --gin_file=dss_cqa_xxl.gin --devices=64 --mesh=data:8,model:8

Nothing is allocated and nothing runs: the CPU is split into N simulated devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``; the process re-executes itself
when JAX was already started with another device count), the train state is built with
``jax.eval_shape``, and the trainer's partitioned train step
(``dss_jax.trainer.make_train_step`` with ``dss_jax.partitioning``'s shardings) is
lowered and compiled for the simulated mesh.  The report gives, per device:

* parameters and optimizer state (exact, from the shardings);
* activations and temporaries (``compiled.memory_analysis().temp_size_in_bytes``; XLA's
  CPU compiler, so an estimate of what the TPU/GPU compiler will assign);
* FLOPs per step: XLA's cost analysis of the step with the layers unrolled (the compiled
  step scans the layers, and XLA counts a loop body once, not once per layer), next to
  the analytic ``6*N*T`` and an encoder/decoder-aware model-FLOPs count;
* a roofline step time on the chosen chip (peak bf16 FLOP/s and HBM bandwidth;
  communication not modelled) and the MFU that step time would give.

A plan that does not fit the chip's memory exits with status 3 and says what to change.
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


@dataclasses.dataclass(frozen=True)
class Chip:
    """Vendor spec sheet numbers of one accelerator chip."""

    name: str
    peak_bf16_tflops: float  # dense bf16 matmul peak
    hbm_gib: float
    hbm_gb_per_s: float
    source: str


# Vendor specifications: Google Cloud TPU system-architecture pages (v4, v5p, v5e) and
# NVIDIA data sheets (A100 80GB SXM, H100 SXM, H200 SXM); bf16 peaks are dense (no sparsity).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275.0, 32.0, 1200.0, "cloud.google.com/tpu/docs/v4"),
    "v5p": Chip("TPU v5p", 459.0, 95.0, 2765.0, "cloud.google.com/tpu/docs/v5p"),
    "v5e": Chip("TPU v5e", 197.0, 16.0, 819.0, "cloud.google.com/tpu/docs/v5e"),
    "a100": Chip("NVIDIA A100 80GB SXM", 312.0, 80.0, 2039.0, "NVIDIA A100 data sheet"),
    "h100": Chip("NVIDIA H100 SXM", 989.0, 80.0, 3350.0, "NVIDIA H100 data sheet"),
    "h200": Chip("NVIDIA H200 SXM", 989.0, 141.0, 4800.0, "NVIDIA H200 data sheet"),
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
    """Everything the plan compiles for."""

    model_name: str  # for the report
    model_config: Any  # dss_jax.configs.T5Config (scan_layers is set by the plan)
    devices: int
    data: int
    model_parallel: int
    fsdp: bool
    chip: Chip
    batch: int
    input_length: int
    target_length: int
    optimizer: Mapping[str, Any]
    microbatches: int = 1
    pack: bool = False


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


def count_params(tree: Any) -> int:
    import jax
    import numpy as np

    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(tree)))


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
    n_total = count_params(params)
    n_enc = count_params(params["encoder"])
    n_dec = count_params(params["decoder"])
    if config.tie_word_embeddings:
        n_dec += config.vocab_size * config.d_model
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
        return self.total_bytes <= self.capacity_bytes

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
    smaller_state = "--optimizer=adafactor: factored second moments, no first moment (T5X's default)"
    fully_sharded = result.global_state_bytes / spec.devices
    if fully_sharded > result.capacity_bytes:
        tips = [f"even split over all {spec.devices} devices, parameters + optimizer state need "
                f"{_gib(fully_sharded).strip()} per device: use more devices (--devices) or a chip with "
                "more HBM (--chip)"]
        if spec.optimizer.get("name") == "adamw":
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
        if spec.optimizer.get("name") == "adamw":
            tips.append(smaller_state)
    if result.temp_bytes > 0.25 * result.capacity_bytes or not tips:
        if spec.model_config.remat_policy != "full":
            tips.append("--remat=full: recompute activations in the backward pass instead of storing them")
        tips.append("--microbatches=K: accumulate gradients over K smaller pieces of the batch")
        tips.append("a smaller --batch or shorter --input_length/--target_length")
    return tips


def _abstract_state(spec: PlanSpec, model_config):
    """(model, optimizer, mesh, rules, abstract state, state shardings)."""
    import jax

    from dss_jax import partitioning, trainer
    from dss_jax.model import T5

    model = T5(model_config)
    optimizer = trainer.make_optimizer(**spec.optimizer)
    mesh = partitioning.make_mesh(data=spec.data, model=spec.model_parallel)
    rules = partitioning.logical_axis_rules(fsdp=spec.fsdp)
    shapes = {"encoder_input_tokens": (spec.batch, spec.input_length),
              "decoder_input_tokens": (spec.batch, spec.target_length)}
    with trainer.sharding_context(mesh, rules):
        abstract = jax.eval_shape(lambda rng: trainer.init_train_state(model, optimizer, rng, shapes),
                                  jax.random.PRNGKey(0))
        shardings = partitioning.state_shardings(abstract, model, mesh, rules)
    return model, optimizer, mesh, rules, abstract, shardings


def _lower_step(spec: PlanSpec, model_config):
    """The lowered (not yet compiled) train step, and the abstract state and its shardings."""
    import jax
    import jax.numpy as jnp

    from dss_jax import losses, partitioning, trainer

    model, optimizer, mesh, rules, abstract, shardings = _abstract_state(spec, model_config)
    features = feature_specs(spec.batch, spec.input_length, spec.target_length, spec.pack)
    batch_shardings = partitioning.batch_shardings(mesh, list(features))
    batch = {name: jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=batch_shardings[name])
             for name, (shape, dtype) in features.items()}
    loss_config = losses.LossConfig(mode="per_sequence", num_microbatches=spec.microbatches)
    step = trainer.make_train_step(model, optimizer, loss_config, mesh, shardings, batch_shardings, rules)
    with trainer.sharding_context(mesh, rules):
        lowered = step.jitted.lower(partitioning.with_sharding(abstract, shardings), batch)
    return lowered, abstract, shardings, batch, batch_shardings


def run_plan(spec: PlanSpec, log=lambda msg: None) -> PlanResult:
    """Build, lower and compile the step for ``spec``; refuse early when the state alone cannot fit."""
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
    log("lowering and compiling the train step (layers scanned) ...")
    lowered, _, _, batch, batch_shardings = _lower_step(spec, scanned)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    result.compile_seconds = time.perf_counter() - start
    result.batch_bytes = per_device_bytes(batch, batch_shardings)
    result.temp_bytes = int(memory.temp_size_in_bytes)
    result.output_extra_bytes = max(int(memory.output_size_in_bytes) - int(memory.alias_size_in_bytes), 0)

    log("counting FLOPs on the step with unrolled layers (lowering only) ...")
    unrolled = spec.model_config.replace(scan_layers=False)
    unrolled_lowered = _lower_step(spec, unrolled)[0]
    cost = unrolled_lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    result.compiled_flops_per_device = float(cost["flops"]) / spec.devices
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


def format_report(result: PlanResult) -> str:
    spec = result.spec
    chip = spec.chip
    lines = [
        f"plan: {spec.model_name} ({_count(result.params)} params) on {spec.devices} x {chip.name}, "
        f"mesh data={spec.data} x model={spec.model_parallel}, fsdp={'on' if spec.fsdp else 'off'}, "
        f"remat={spec.model_config.remat_policy}, optimizer={spec.optimizer.get('name')}",
        f"batch {spec.batch} x (inputs {spec.input_length} + targets {spec.target_length})"
        f"{' packed' if spec.pack else ''}, microbatches {spec.microbatches}, "
        f"activations {spec.model_config.dtype}",
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
    if result.fits and not result.refused_before_compile:
        lines.append("FITS")
    else:
        need = "parameters + optimizer state alone need" if result.refused_before_compile else "needs"
        lines.append(f"DOES NOT FIT: {need} {_gib(result.total_bytes).strip()} per device > {chip.hbm_gib:.0f} GiB "
                     f"of {chip.name} HBM. Try:")
        lines += [f"  - {tip}" for tip in suggestions(result)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dss_jax.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, required=True, help="number of (simulated) devices = chips")
    parser.add_argument("--mesh", help="e.g. data:8,model:4 (-1: the rest); default: gin train.mesh_shape, "
                        "else data:-1,model:1")
    parser.add_argument("--chip", default="v4", choices=sorted(CHIPS))
    parser.add_argument("--fsdp", action="store_true", help="shard parameters/optimizer state over data too")
    parser.add_argument("--remat", choices=["none", "full", "minimal"], help="rematerialisation policy")
    parser.add_argument("--model", help="named T5 config (default: from the gin file, else t5_1_1_small)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="activation dtype (default bfloat16)")
    parser.add_argument("--batch", type=int, help="global batch rows (default: gin batch_size, doubled in "
                        "paired mode, else 64)")
    parser.add_argument("--input_length", type=int, help="default: gin, else 1024")
    parser.add_argument("--target_length", type=int, help="default: gin, else 256")
    parser.add_argument("--optimizer", choices=["adamw", "adafactor"], help="default: gin, else adamw")
    parser.add_argument("--microbatches", type=int, help="gradient-accumulation pieces (default: gin, else 1)")
    parser.add_argument("--pack", action="store_true", help="packed batches (segment ids and positions)")
    return parser


def _from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str]) -> dict:
    """Model, optimizer, batch and mesh settings of the trainer's ``train`` configurable."""
    import gin

    from dss_jax import gin_utils
    from dss_jax import train as train_module  # registers the `train` configurable

    gin_utils.parse_gin(gin_files, gin_bindings, search_paths)
    bound = gin.get_bindings(train_module.train)  # references and macros evaluated
    if "model_config" not in bound:
        raise PlanError("the gin files bind no train.model_config; pass --model")
    lengths = dict(bound.get("sequence_lengths") or {"inputs": 512, "targets": 256})
    pack = bool(bound.get("pack", False))
    batch = int(bound.get("batch_size", 64))
    paired = (bound.get("train_mode", "step_by_step") == "step_by_step" and bound.get("loss_mode", "paired") == "paired"
              and not bound.get("task"))
    optimizer = bound.get("optimizer")
    optimizer = dataclasses.asdict(optimizer) if optimizer is not None else {"name": "adamw"}
    if optimizer.get("total_steps") is None:
        optimizer["total_steps"] = int(bound.get("train_steps", 10000))  # as train() does
    data, model = bound.get("mesh_shape", (-1, 1))
    try:
        model_name = str(gin.query_parameter("model_config.name"))
    except ValueError:
        model_name = "gin model_config"
    return {
        "model_name": model_name,
        "model_config": bound["model_config"],
        "optimizer": optimizer,
        # paired mode without packing: every example is a label row and a rationale row
        "batch": batch * (2 if paired and not pack else 1),
        "input_length": int(lengths["inputs"]),
        "target_length": int(lengths["targets"]),
        "pack": pack,
        "mesh": f"data:{data},model:{model}",
        "fsdp": bool(bound.get("fsdp", False)),
        "microbatches": int(bound.get("num_microbatches", 1)),
    }


def spec_from_args(args: argparse.Namespace, gin_values: Mapping[str, Any]) -> PlanSpec:
    """Command-line flags win over the gin file, which wins over the defaults."""
    from dss_jax.configs import get_config

    if args.model:
        model_name, model_config = args.model, get_config(args.model, dtype="bfloat16")
    elif "model_config" in gin_values:
        model_name, model_config = gin_values["model_name"], gin_values["model_config"]
    else:
        model_name, model_config = "t5_1_1_small", get_config("t5_1_1_small", dtype="bfloat16")
    if args.dtype:
        model_config = model_config.replace(dtype=args.dtype)
    if args.remat:
        model_config = model_config.replace(remat_policy=args.remat)
    optimizer = dict(gin_values.get("optimizer", {"name": "adamw"}))
    if args.optimizer:
        optimizer["name"] = args.optimizer
    mesh = args.mesh or gin_values.get("mesh", "data:-1,model:1")
    data, model_parallel = resolve_mesh(parse_mesh(mesh), args.devices)
    batch = args.batch or gin_values.get("batch", 64)
    if batch % data:
        raise PlanError(f"--batch {batch} is not divisible by the data axis ({data})")
    return PlanSpec(
        model_name=model_name, model_config=model_config, devices=args.devices, data=data,
        model_parallel=model_parallel, fsdp=args.fsdp or gin_values.get("fsdp", False), chip=CHIPS[args.chip],
        batch=batch,
        input_length=args.input_length or gin_values.get("input_length", 1024),
        target_length=args.target_length or gin_values.get("target_length", 256),
        optimizer=optimizer, microbatches=args.microbatches or gin_values.get("microbatches", 1),
        pack=args.pack or gin_values.get("pack", False),
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    from dss_jax import gin_utils

    gin_utils.add_gin_flags(parser)
    rest, shorthand = gin_utils.rewrite_gin_args(argv)
    args = parser.parse_args(rest)
    try:
        ensure_simulated_devices(args.devices, argv)
        gin_values = {}
        if args.gin_file:
            search = [p for p in args.gin_search_paths.split(",") if p]
            gin_values = _from_gin(args.gin_file, list(args.gin_bindings) + shorthand, search)
        spec = spec_from_args(args, gin_values)
        result = run_plan(spec, log=lambda msg: print(f"# {msg}", file=sys.stderr, flush=True))
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0 if result.fits and not result.refused_before_compile else EXIT_DOES_NOT_FIT


if __name__ == "__main__":
    sys.exit(main())
