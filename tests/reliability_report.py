"""Pytest plugin that prints "reliability: N cases tried, M handled cleanly" at the end of a session.

It counts the outcomes of the parametrized reliability tests (tests/test_reliability.py, one test
per row of tests/reliability_cases.py) from their test reports, so it works in a plain run and
under pytest-xdist, where the reports reach the controlling process. test_reliability.py
registers it for a plain run; for `-n 2` runs the controlling process needs it too, which one
call in tests/conftest.py gives:

    def pytest_configure(config):
        import reliability_report
        reliability_report.register(config)
"""
from __future__ import annotations

import re

PLUGIN_NAME = "dss_reliability_report"
CASE_TEST = "test_reliability.py::test_bad_input_is_handled_cleanly["


class ReliabilityReport:
    """Collects one outcome per reliability case and prints the count in the terminal summary."""

    def __init__(self):
        self.outcomes = {}  # case id -> (handled cleanly, first line of the failure)

    def pytest_runtest_logreport(self, report):
        if CASE_TEST not in report.nodeid:
            return
        case_id = report.nodeid.split(CASE_TEST, 1)[1].rstrip("]")
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[case_id] = (report.passed, _failure_line(report))

    def pytest_terminal_summary(self, terminalreporter):
        if not self.outcomes:
            return
        clean = sum(ok for ok, _ in self.outcomes.values())
        terminalreporter.write_line(f"reliability: {len(self.outcomes)} cases tried, {clean} handled cleanly")
        for case_id, (ok, line) in sorted(self.outcomes.items()):
            if not ok:
                terminalreporter.write_line(f"  not clean: {case_id}: {line}")


def _failure_line(report) -> str:
    if report.passed:
        return ""
    text = getattr(report, "longreprtext", "") or ""
    match = re.search(r"AssertionError: (.*)", text)
    if match:
        return match.group(1)[:300]
    lines = text.strip().splitlines()
    return lines[-1][:300] if lines else ""


def register(config) -> None:
    """Register the plugin once per process (calling it again does nothing)."""
    if config.pluginmanager.get_plugin(PLUGIN_NAME) is None:
        config.pluginmanager.register(ReliabilityReport(), PLUGIN_NAME)
