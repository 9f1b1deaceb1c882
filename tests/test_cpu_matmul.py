"""The CPU matmul programs (dss_jax.cpu_matmul): same values and gradients as the plain
einsum, and bfloat16 dots that XLA runs natively (when the model uses them:
tests/test_model_hardware.py)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss_jax import cpu_matmul, hardware

ATTENTION_SPECS = ["bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd", "bqhd,bhkd->bhqk", "bhqk,bhkd->bqhd"]


def _random(key, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32).astype(dtype)


def _operand_shapes(spec: str, sizes=dict(b=2, q=5, k=7, h=3, d=4)):
    inputs = spec.split("->")[0].split(",")
    return [tuple(sizes[c] for c in s) for s in inputs]


def _loss_and_grads(fn, *args):
    """A scalar of the product (weighted so every output element matters) and its gradients."""
    def loss(*a):
        out = fn(*a).astype(jnp.float32)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape)))
    return jax.value_and_grad(loss, argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("x_shape", [(6, 8), (2, 3, 8)])
def test_float32_matmul_matches_einsum_values_and_gradients(x_shape):
    x, kernel = _random(0, x_shape), _random(1, (8, 5))
    got = _loss_and_grads(lambda a, b: cpu_matmul.matmul(a, b, "float32"), x, kernel)
    want = _loss_and_grads(lambda a, b: jnp.einsum("...d,df->...f", a, b), x, kernel)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(got[1], want[1]):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_bfloat16_matmul_matches_float32_product_of_rounded_operands():
    """bf16 operands, f32 accumulation: equal to the f32 product of the rounded inputs up to
    the final rounding of the bf16 result; the kernel gradient keeps the kernel's f32 dtype."""
    x = _random(0, (2, 9, 16), jnp.bfloat16)
    kernel = _random(1, (16, 12))
    out = cpu_matmul.matmul(x, kernel, "bfloat16")
    assert out.dtype == jnp.bfloat16
    want = jnp.einsum("...d,df->...f", x.astype(jnp.float32), kernel.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=1e-2, atol=1e-2)
    _, (grad_x, grad_kernel) = _loss_and_grads(lambda a, b: cpu_matmul.matmul(a, b, "bfloat16"), x, kernel)
    _, (want_x, want_kernel) = _loss_and_grads(
        lambda a, b: jnp.einsum("...d,df->...f", a.astype(jnp.float32), b.astype(jnp.bfloat16).astype(jnp.float32)),
        x, kernel)
    assert grad_x.dtype == jnp.bfloat16 and grad_kernel.dtype == jnp.float32
    np.testing.assert_allclose(grad_x.astype(jnp.float32), want_x.astype(jnp.float32), rtol=2e-2, atol=5e-2)
    np.testing.assert_allclose(grad_kernel, want_kernel, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("spec", ATTENTION_SPECS)
def test_attention_einsum_matches_einsum_values_and_gradients(spec):
    a_shape, b_shape = _operand_shapes(spec)
    a, b = _random(0, a_shape, jnp.bfloat16), _random(1, b_shape, jnp.bfloat16)
    got_loss, got = _loss_and_grads(lambda x, y: cpu_matmul.einsum(spec, x, y), a, b)
    want_loss, want = _loss_and_grads(
        lambda x, y: jnp.einsum(spec, x.astype(jnp.float32), y.astype(jnp.float32)), a, b)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-3, atol=1e-3)
    for g, w in zip(got, want):
        assert g.dtype == jnp.bfloat16 and g.shape == w.shape
        np.testing.assert_allclose(g.astype(jnp.float32), w.astype(jnp.float32), rtol=2e-2, atol=5e-2)


def _dot_operand_types(hlo_text: str) -> list[tuple[str, ...]]:
    """Element types of the operands of every dot in an optimized HLO module."""
    types = []
    for computation in re.split(r"\n(?=%|ENTRY)", hlo_text):
        defined = dict(re.findall(r"(%[\w.-]+) = (\w+)\[", computation))
        for operands in re.findall(r" dot\(([^)]*)\)", computation):
            types.append(tuple(defined.get(name.strip(), "?") for name in operands.split(",")))
    return types


@pytest.mark.skipif(not hardware.cpu_has_bf16_matrix_units(), reason="CPU reports no bf16 matrix units")
def test_bfloat16_forward_and_backward_dots_run_natively_in_bfloat16():
    """No dot of a bf16 layer's training step is rewritten into convert + float32 matmul."""
    x = _random(0, (4, 32, 64), jnp.bfloat16)
    kernel = _random(1, (64, 96))
    q, k = _random(2, (4, 32, 3, 32), jnp.bfloat16), _random(3, (4, 32, 3, 32), jnp.bfloat16)

    def loss(x, kernel, q, k):
        logits = cpu_matmul.einsum("bqhd,bkhd->bhqk", q, k)
        out = cpu_matmul.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits), k)
        y = cpu_matmul.matmul(x, kernel, "bfloat16").astype(jnp.float32)
        return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.square(out))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    types = _dot_operand_types(grad.lower(x, kernel, q, k).compile().as_text())
    assert len(types) == 3 * 3  # two einsums and the matmul: the product and two gradients each
    assert all(t == ("bf16", "bf16") for t in types), types
    jax.block_until_ready(grad(x, kernel, q, k))  # and XLA can run them


@pytest.mark.skipif(not hardware.cpu_has_bf16_matrix_units(), reason="CPU reports no bf16 matrix units")
@pytest.mark.parametrize("logits_dot_in_fp32", [True, False])
def test_a_bfloat16_t5_training_step_multiplies_in_float32_only_in_a_float32_output_layer(logits_dot_in_fp32):
    import dss_jax
    from dss_jax.model import T5
    from model_support import program_config, random_params

    config = program_config(dss_jax.get_config("t5_1_1_tiny", dropout_rate=0.0, dtype="bfloat16",
                                               logits_dot_in_fp32=logits_dot_in_fp32), "cpu")
    tokens = np.arange(2, 2 + 2 * 6, dtype=np.int32).reshape(2, 6)

    def loss(params):
        logits = T5(config).apply({"params": params}, tokens, tokens, enable_dropout=False)
        return jnp.mean(jax.nn.log_softmax(logits))

    hlo = jax.jit(jax.grad(loss)).lower(random_params("t5_1_1_tiny")).compile().as_text()
    float32_dots = [t for t in _dot_operand_types(hlo) if t != ("bf16", "bf16")]
    # the output layer's product and its two gradients
    assert len(float32_dots) == (3 if logits_dot_in_fp32 else 0), float32_dots
