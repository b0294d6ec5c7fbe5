"""A real browser uses the chat page of a real `adaptflow serve`: pick a system, ask, see the answer
stream in with its citations (a link opens the cited chunk) and the latency split.
Headless Chromium from Debian's packages, driven by Playwright with executable_path (nothing downloaded)."""

from __future__ import annotations

import httpx
import pytest

from tests.flows.serve_helpers import running_server
from tests.flows.test_ui_browser import ARGS, CHROMIUM

pytestmark = [pytest.mark.browser, pytest.mark.integration]
HARBOR = "When did the Pellin harbor open?"


@pytest.fixture(scope="module")
def server(served_registry, tmp_path_factory):
    with running_server(served_registry, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


def test_chat_page_streams_an_answer_with_citations(server):
    from playwright.sync_api import expect, sync_playwright

    expected = httpx.post(server + "/v1/chat/completions", timeout=120, json={
        "model": "tiny-both@production", "max_tokens": 8,
        "messages": [{"role": "user", "content": HARBOR}]}).json()["choices"][0]["message"]["content"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(server + "/", wait_until="networkidle")
        picker = page.get_by_label("System")
        options = picker.locator("option").all_inner_texts()
        assert {"tiny-both@production", "tiny-both@latest", "tiny-behavior@production"} <= set(options)
        picker.select_option("tiny-both@production")
        page.get_by_label("max tokens").fill("8")
        page.get_by_label("Question").fill(HARBOR)
        page.get_by_role("button", name="Send").click()
        turn = page.locator(".turn[data-done=true]")
        expect(turn).to_have_count(1, timeout=60_000)
        assert turn.locator(".answer").inner_text() == expected  # greedy: what the API answers
        expect(turn.locator(".timing")).to_contain_text("retrieval")
        expect(turn.locator(".timing")).to_contain_text("generation")
        link = turn.locator(".sources a").first
        expect(link).to_contain_text("harbor.md")
        link.click()
        expect(page.locator("#chunk-text")).to_contain_text("1871")
        page.get_by_label("Question").fill("Who founded the Saltmarsh choir?")
        page.get_by_role("button", name="Send").click()
        expect(page.locator(".turn[data-done=true]")).to_have_count(2, timeout=60_000)
        expect(page.locator(".error")).to_have_count(0)
        browser.close()
