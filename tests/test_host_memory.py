"""`dss_jax.host_memory`: when the command-line tools restart with transparent huge pages."""
import os
import subprocess
import sys
import textwrap

import pytest

from dss_jax import host_memory

GLIBC = ("glibc", "2.36")


def test_madvise_mode_on_recent_glibc_adds_the_tunable():
    env = host_memory.huge_page_environment({"PATH": "/bin"}, GLIBC, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_other_tunables_are_kept():
    env = host_memory.huge_page_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, "madvise")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, libc, mode, system", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise", "Linux"),  # the user chose
    ({"DSS_HOST_HUGE_PAGES": "0"}, GLIBC, "madvise", "Linux"),
    ({}, GLIBC, "always", "Linux"),   # every mapping gets huge pages already
    ({}, GLIBC, "never", "Linux"),    # none can
    ({}, GLIBC, None, "Linux"),       # no THP setting to read
    ({}, ("glibc", "2.31"), "madvise", "Linux"),  # before the tunable existed
    ({}, ("", ""), "madvise", "Linux"),            # musl and others
    ({}, GLIBC, "madvise", "Darwin"),
])
def test_no_restart_where_it_cannot_help_or_was_decided(environ, libc, mode, system):
    assert host_memory.huge_page_environment(environ, libc, mode, system) is None


def test_mode_is_the_bracketed_word_of_the_kernel_setting(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert host_memory.transparent_huge_page_mode(str(setting)) == "madvise"
    assert host_memory.transparent_huge_page_mode(str(tmp_path / "missing")) is None


def test_restart_keeps_the_command_line_and_sets_the_tunable_once(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from dss_jax import host_memory
        host_memory.transparent_huge_page_mode = lambda path=None: "madvise"
        host_memory.platform.libc_ver = lambda: ("glibc", "2.36")
        host_memory.platform.system = lambda: "Linux"
        print("start", flush=True)
        host_memory.reexec_with_huge_pages()
        print("tunables", os.environ.get("GLIBC_TUNABLES"), "args", sys.argv[1:])
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "DSS_HOST_HUGE_PAGES")}
    out = subprocess.run([sys.executable, str(script), "--flag", "a b"], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out == ["start", "start", "tunables glibc.malloc.hugetlb=1 args ['--flag', 'a b']"]
