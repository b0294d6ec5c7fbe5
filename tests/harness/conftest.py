"""The lm-evaluation-harness run (`make test-harness`): its marker, and the switch that keeps it out of `make test`."""

from __future__ import annotations


def pytest_configure(config):
    # pyproject's --strict-markers needs every marker declared; this one belongs to this folder alone
    config.addinivalue_line("markers", "harness: runs lm-evaluation-harness against `adaptflow serve` "
                                       "(make test-harness; installs lm-eval in .venv-harness)")
