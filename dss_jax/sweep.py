"""``python -m dss_jax.sweep``: runs ``dss_jax.cli.sweep`` (the entrypoint's code lives there; the library is ``dss_jax.sweeps``)."""
import sys

if __name__ == "__main__":
    from dss_jax.cli import sweep

    sys.exit(sweep.main())
