"""``python -m dss_jax.export``: runs ``dss_jax.cli.export`` (the entrypoint's code lives there)."""
import sys

if __name__ == "__main__":
    from dss_jax.cli import export

    sys.exit(export.main())
