"""Matmuls written in the form XLA's CPU backend runs fastest, with their own backward pass.

XLA CPU (jax 0.10) runs a bfloat16 dot on the processor's bf16 matrix units (AMX,
AVX512-BF16) only when the result is float32 and the operands are laid out as
[M, K] x [K, N] (or, batched, with the contraction on the left operand's last axis).
Any other bf16 dot (a bf16 result, or a transposed operand, as in the backward products
autodiff builds) is rewritten into converts and a float32 matmul; float32 dots with a
transposed operand are also slower than the plain form (the measured GFLOP/s are in
docs/speed.md, "Hardware choices").

`matmul(x, kernel, dtype)` is a `jax.custom_vjp` whose forward product and both backward
products have that form: float32 results cast back to `dtype`, and transposed operands
made physically row-major first (flattened behind an optimization barrier, since XLA would
otherwise fold a plain transpose into the dot's layout). The kernel gradient comes back in
the kernel's own dtype (float32 parameters get a float32 gradient). `einsum(spec, a, b)`
does the same for the two batched attention products in bfloat16.

The model uses them when its config says so (`T5Config.matmul` "cpu" or "cpu_fp32", which
`dss_jax.hardware.resolve` picks for one CPU device); elsewhere (accelerators; multi-device
meshes, where the flattening would cost collectives) the plain einsum is the right program.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _row_major_permute(a: jax.Array, spec: str, new_spec: str) -> jax.Array:
    """`a` with its axes reordered from `spec` to `new_spec`, physically (see `_row_major_transpose`)."""
    permuted = jnp.transpose(a, [spec.index(c) for c in new_spec])
    return jax.lax.optimization_barrier(permuted.reshape(-1)).reshape(permuted.shape)


def _row_major_transpose(a: jax.Array) -> jax.Array:
    """a.T [N, M] stored row-major. Flattening forces the data to be moved; the barrier stops
    XLA from cancelling the reshapes and folding the transpose back into the consumer's layout."""
    return _row_major_permute(a, "mk", "km")


def _dot(a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
    """[M, K] x [K, N] on `dtype` operands with a float32 result."""
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def matmul(x: jax.Array, kernel: jax.Array, dtype: str = "bfloat16", result_dtype: str | None = None) -> jax.Array:
    """x [..., K] times kernel [K, N] computed in `dtype`, result [..., N] in `result_dtype`
    (default `dtype`; "float32" keeps the product as the matrix units return it)."""
    rows = x.reshape(-1, x.shape[-1])
    product = _dot(rows, kernel, dtype).astype(result_dtype or dtype)
    return product.reshape(x.shape[:-1] + (kernel.shape[-1],))


def _matmul_fwd(x, kernel, dtype, result_dtype):
    # The backward pass multiplies by the kernel in `dtype`: keep the forward's cast (one
    # conversion a step instead of two; docs/speed.md) and the kernel's dtype, for its gradient.
    cast = kernel.astype(dtype)
    product = matmul(x, cast, dtype, result_dtype)
    return product, (x, cast, jnp.zeros((0,), kernel.dtype))


def _matmul_bwd(dtype, result_dtype, residuals, grad):
    x, kernel, kernel_dtype = residuals
    rows = x.reshape(-1, x.shape[-1]).astype(dtype)
    grad_rows = grad.reshape(-1, grad.shape[-1]).astype(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        # XLA multiplies by a float32 kernel read transposed in place about as fast as by a
        # row-major copy, which would cost memory (docs/speed.md).
        grad_x = jnp.dot(grad_rows, kernel.T)
    else:
        grad_x = _dot(grad_rows, _row_major_transpose(kernel), dtype)  # already in `dtype`
    grad_kernel = _dot(_row_major_transpose(rows), grad_rows, dtype)
    return grad_x.astype(x.dtype).reshape(x.shape), grad_kernel.astype(kernel_dtype.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """Two-operand `jnp.einsum(spec, a, b)` on bfloat16 operands with a float32 result, and
    a backward pass whose two products are also bfloat16 with float32 results (autodiff
    would multiply the float32 cotangent by an upcast operand), each with the cotangent laid
    out contraction-last. For the batched attention products. Every index of an operand
    must appear in the other operand or in the output."""
    return jnp.einsum(spec, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32)


def _einsum_fwd(spec, a, b):
    return einsum(spec, a, b), (a, b)


def _einsum_bwd(spec, residuals, grad):
    a, b = residuals
    inputs, out = spec.replace(" ", "").split("->")
    a_spec, b_spec = inputs.split(",")
    grad = grad.astype(jnp.bfloat16)
    grad_a = _contract_last(grad, out, b, b_spec, a_spec)
    grad_b = _contract_last(grad, out, a, a_spec, b_spec)
    return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


einsum.defvjp(_einsum_fwd, _einsum_bwd)


def _contract_last(grad, grad_spec, other, other_spec, result_spec):
    """einsum(grad, other) -> result as a dot whose left operand is `grad` laid out
    [batch..., free..., contracted]: XLA CPU cannot run a bfloat16 batched dot that
    contracts its left operand on an outer axis (jax 0.10: "Unsupported element type for
    DotThunk::Execute: BF16 x BF16 = F32"), and `jnp.einsum` may pick either operand order."""
    contracted = [c for c in grad_spec if c in other_spec and c not in result_spec]
    if len(contracted) != 1:
        return jnp.einsum(f"{grad_spec},{other_spec}->{result_spec}", grad, other.astype(jnp.bfloat16),
                          preferred_element_type=jnp.float32)
    batch = [c for c in grad_spec if c in other_spec and c in result_spec]
    free_grad = [c for c in grad_spec if c not in other_spec]
    free_other = [c for c in other_spec if c not in grad_spec]
    lhs_spec = "".join(batch + free_grad + contracted)
    if lhs_spec != grad_spec:
        grad = _row_major_permute(grad, grad_spec, lhs_spec)
    dimension_numbers = (([len(lhs_spec) - 1], [other_spec.index(contracted[0])]),
                         (list(range(len(batch))), [other_spec.index(c) for c in batch]))
    out = jax.lax.dot_general(grad, other.astype(jnp.bfloat16), dimension_numbers,
                              preferred_element_type=jnp.float32)
    out_spec = "".join(batch + free_grad + free_other)
    return jnp.transpose(out, [out_spec.index(c) for c in result_spec])
