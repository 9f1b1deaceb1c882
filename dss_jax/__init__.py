"""dss_jax: distilling step-by-step on JAX/Flax."""
