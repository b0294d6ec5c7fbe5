"""A real browser drives the real Prefect UI: start the `adapt` deployment from its form, see it finish.

Headless Chromium from Debian's packages (installed by .ci/run), driven by Playwright for Python
with executable_path; no browser is downloaded at run time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from flows.server import api_url, server_env, start_server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deployment_ready(port: int, name: str) -> bool:
    req = urllib.request.Request(api_url(port) + "/deployments/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return any(d["name"] == name for d in json.load(resp))


@pytest.fixture
def ui(tmp_path, tiny_llama_dir, tiny_embedder_dir, workspace_writer):
    """A workspace with specs/spec.yaml, a Prefect server, and `adaptflow ui` serving the deployments."""
    ws = tmp_path / "ws"
    spec = workspace_writer(ws / "specs", tiny_llama_dir, tiny_embedder_dir, gates='{hit_at_k: ">= 0.0"}')
    # a second spec, so the form offers a real choice; the test picks the one that is not the default
    (ws / "specs" / "another.yaml").write_text(spec.read_text().replace("name: tiny-both", "name: tiny-another"))
    port = _free_port()
    home = tmp_path / "prefect-home"
    server = start_server(port, home=home, log=tmp_path / "server.log")
    env = server_env(port, home) | {"ADAPTFLOW_REGISTRY": str(ws / "registry"), "ADAPTFLOW_STAGES": str(ws / "stages")}
    cli = [sys.executable, "-m", "flows.cli", "ui", "--port", str(port)]
    with open(tmp_path / "ui.log", "wb") as log:
        served = subprocess.Popen(cli, cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _deployment_ready(port, "adapt"):
            assert served.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the adapt deployment never appeared"
            time.sleep(1)
        yield port, ws
    finally:
        _stop(served)
        _stop(server)


def test_start_adapt_from_the_ui_form_and_see_the_evaluation(ui):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    port, ws = ui
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/deployments", wait_until="networkidle")
        page.get_by_role("link", name="adapt").first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").click()
        page.get_by_text("spec (Optional)").wait_for()
        picker = page.locator("button.p-select-button__control").first
        picker.focus()
        page.keyboard.press("Space")  # the select opens on the keyboard, as for a user tabbing in
        page.get_by_role("option", name="specs/spec.yaml").click()
        expect(picker).to_have_text("specs/spec.yaml")
        run_name = page.get_by_role("textbox").first.input_value()
        page.get_by_role("button", name="Submit").click()
        page.wait_for_load_state("networkidle")
        try:  # the confirmation toast links to the run, but it is gone after a few seconds (missed once in 5 suites)
            page.get_by_role("link", name=run_name).first.click(timeout=10_000)
        except PlaywrightTimeout:  # then open the run from the runs list, as a user would
            page.goto(f"{base}/runs", wait_until="networkidle")
            page.get_by_role("link", name=run_name).first.click(timeout=90_000)
        page.wait_for_url(re.compile(r".*/runs/flow-run/.*"))
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=300_000)
        page.get_by_text("Artifacts", exact=True).first.click()
        expect(page.get_by_text("eval-tiny-both").first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("run-tiny-both").first).to_be_visible()
        page.get_by_text("eval-tiny-both").first.click()
        expect(page.get_by_text("adapter+retrieval").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ws / "artifact.png"))
        browser.close()
    assert (ws / "registry" / "tiny-both" / "v1" / "manifest.json").exists()


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
