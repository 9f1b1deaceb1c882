"""Transparent huge pages for host memory, which the command-line tools switch on at start.

XLA CPU allocates the temporary buffers of every step fresh with `malloc`, and glibc
serves blocks over 32 MiB with a new `mmap`. The kernel then faults in and zeroes those
buffers 4 KiB at a time on every step: about 198,000 page faults a step for the bf16
training step of the CPU benchmark (T5 1.1 small, 2-core dev box), a quarter of its time.
glibc's `glibc.malloc.hugetlb=1` tunable makes `malloc` ask for transparent huge pages
(`madvise`), which took the faults to 1,300-1,600 a step and the step from 0.97-0.99 to
0.75 s, at the same peak RSS (2.88 GiB). Keeping freed memory instead (no `mmap`, no
trimming) removed the faults too but doubled the peak RSS (5.1-5.9 GiB).

A glibc tunable is read once, when the process starts, so `reexec_with_huge_pages()` runs
the same command line again with it set. It does so only where it helps: Linux, glibc
2.35 or later, transparent huge pages in `madvise` mode (with `always` every mapping gets
them already; with `never` none can), the tunable not already set, and
`DSS_HOST_HUGE_PAGES` not `0`. Only `__main__` blocks call it, never library code.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional, Sequence

TUNABLE = "glibc.malloc.hugetlb"
SWITCH = "DSS_HOST_HUGE_PAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_page_mode(path: str = THP_MODE_FILE) -> Optional[str]:
    """The bracketed mode of the kernel's THP setting ("always", "madvise", "never"), or None."""
    try:
        text = open(path).read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _glibc_at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def huge_page_environment(environ: Mapping[str, str], libc: tuple[str, str], thp_mode: Optional[str],
                          system: str = "Linux") -> Optional[dict]:
    """The environment to restart with, or None when the process should go on as it is."""
    if environ.get(SWITCH, "1") == "0" or system != "Linux" or thp_mode != "madvise":
        return None
    name, version = libc
    if name != "glibc" or not _glibc_at_least(version, (2, 35)):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if any(item.split("=", 1)[0] == TUNABLE for item in tunables.split(":") if item):
        return None
    new = dict(environ)
    new["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    return new


def reexec_with_huge_pages(argv: Optional[Sequence[str]] = None) -> None:
    """Restart this process with `glibc.malloc.hugetlb=1` where that helps (see the module
    docstring); otherwise return. `argv` defaults to the interpreter's own command line
    (`sys.orig_argv`, which keeps `-m module`)."""
    environ = huge_page_environment(os.environ, platform.libc_ver(), transparent_huge_page_mode(),
                                    platform.system())
    if environ is None:
        return
    argv = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + argv[1:], environ)
