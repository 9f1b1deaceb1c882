"""`python -m dss_jax.teacher`: run the teacher step (see dss_jax.teacher.cli)."""
import sys

from dss_jax.teacher.cli import main

if __name__ == "__main__":
    sys.exit(main())
