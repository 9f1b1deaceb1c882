"""Command-line entrypoints (``python -m dss_jax.train`` etc. run these); nothing in the library imports them."""
