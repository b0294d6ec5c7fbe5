"""`adaptflow run` as a person meets it: a subprocess against the real Prefect test server, its exit
codes, its summary, its one-line errors, and the "up to date" path that starts no server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def _cli(root, *args, env_extra=None, timeout=600):
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ) | {"PREFECT_API_URL": PREFECT_API_URL.value(), "ADAPTFLOW_HOME": str(root / "home")}
    env |= env_extra or {}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done, time.monotonic() - started


def _adapt_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


def test_failed_gate_exits_3_names_the_gate_and_moves_no_alias(prefect_api, isolated, make_workspace):
    spec = make_workspace(goal="knowledge", gates='{exact_match: ">= 0.99", hit_at_k: ">= 0.5"}')
    done, _ = _cli(isolated, "run", str(spec))
    assert done.returncode == 3, done.stderr[-3000:]
    # the terminal summary: arm table, every gate with its value, the alias verdict
    assert re.search(r"^\s+arm\s+exact_match\s+answer_f1", done.stdout, re.M), done.stdout
    assert re.search(r"^\s+base\+retrieval\s+0\.000", done.stdout, re.M)
    assert "gates: FAILED" in done.stdout and "FAIL  exact_match = 0 (needs >= 0.99)" in done.stdout
    assert "pass  hit_at_k = 1 (needs >= 0.5)" in done.stdout
    assert "aliases: none moved (gates failed)" in done.stdout
    assert "registered tiny-knowledge@v1" in done.stdout
    [line] = [x for x in done.stderr.splitlines() if x.startswith("error: gate failed")]
    assert "exact_match = 0 (needs >= 0.99)" in line and "no alias moved" in line and "--force" in line
    # quiet: none of the noise the issue lists
    for noise in ("Finished in state", "Loading weights", "| DEBUG", "Starting temporary server", "Traceback"):
        assert noise not in done.stderr + done.stdout, noise


def test_unchanged_rerun_says_up_to_date_fast_and_is_still_a_flow_run(prefect_api, isolated, make_workspace):
    spec = make_workspace(goal="knowledge", gates='{hit_at_k: ">= 0.5"}')
    first, _ = _cli(isolated, "run", str(spec))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "aliases: latest -> v1, production -> v1" in first.stdout
    before = len(_adapt_runs("tiny-knowledge"))
    again, took = _cli(isolated, "run", str(spec))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-1] == "up to date: tiny-knowledge@v1, nothing ran"
    assert took < 10, f"an unchanged re-run took {took:.1f} s"  # ~1-2 s measured; margin for a busy machine
    assert len(_adapt_runs("tiny-knowledge")) == before + 1  # recorded, named after the spec

    # no server up: nothing is started for the record; the run is noted and recorded by the next command
    from flows.server import free_port

    alone, _ = _cli(isolated, "run", str(spec), env_extra={"PREFECT_API_URL": "", "ADAPTFLOW_PREFECT_PORT": str(free_port())})
    assert alone.returncode == 0 and "up to date: tiny-knowledge@v1" in alone.stdout, alone.stderr[-3000:]
    assert len(_adapt_runs("tiny-knowledge")) == before + 1
    assert (isolated / "home" / "unrecorded-runs.jsonl").exists()
    _cli(isolated, "run", str(spec))
    assert len(_adapt_runs("tiny-knowledge")) == before + 3  # the noted one, then this one
    assert not (isolated / "home" / "unrecorded-runs.jsonl").exists()


def test_a_data_error_is_one_line_with_the_traceback_in_a_log_file(prefect_api, isolated, make_workspace):
    spec = make_workspace(goal="behavior")
    (isolated / "data" / "train.jsonl").write_text('{"messages": [\n')  # broken JSON
    done, _ = _cli(isolated, "run", str(spec))
    assert done.returncode == 1
    errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "train.jsonl" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    log = re.search(r"full traceback: (\S+)", done.stderr).group(1)
    assert "Traceback" in open(log).read()
    verbose, _ = _cli(isolated, "run", str(spec), "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
