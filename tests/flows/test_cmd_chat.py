"""`adaptflow chat` as a user runs it: one process, one model load, a prompt loop on stdin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adaptflow.system import load_system
from components.registry import Registry
from tests.flows.serve_helpers import REPO

pytestmark = pytest.mark.integration


def test_chat_loads_once_and_answers_each_prompt(served_registry):
    questions = ["When did the Pellin harbor open?", "Who founded the Saltmarsh choir?"]
    system = load_system("tiny-both@production", Registry(served_registry))
    env = os.environ | {"ADAPTFLOW_REGISTRY": str(served_registry)}
    typed = "\n".join([questions[0], "/reset", questions[1], "/quit"]) + "\n"
    run = subprocess.run([sys.executable, "-m", "flows.cli", "chat", "tiny-both@production", "--max-tokens", "6"],
                         input=typed, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.count("loaded tiny-both@v1 in") == 1
    for question in questions:  # /reset: each question asked alone, so greedy answers match a fresh query
        answer = system.query(question, max_new_tokens=6).answer
        assert f"tiny-both@v1> {answer}" in out.replace("tiny-both@v1> \n", "tiny-both@v1> "), out
    assert out.count("[1] ") == 2 and "harbor.md" in out and "retrieval" in out
