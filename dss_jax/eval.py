"""``python -m dss_jax.eval``: runs ``dss_jax.cli.evaluate`` (the entrypoint's code lives there)."""
import sys

if __name__ == "__main__":
    from dss_jax import host_memory
    from dss_jax.cli import evaluate

    host_memory.reexec_with_huge_pages()
    sys.exit(evaluate.main())
