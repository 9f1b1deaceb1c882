"""``python -m dss_jax.plan``: runs ``dss_jax.cli.plan`` (the entrypoint's code lives there)."""
import sys

if __name__ == "__main__":
    from dss_jax.cli import plan

    sys.exit(plan.main())
