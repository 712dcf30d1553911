"""Fixtures of the end-to-end tests: headless Debian Chromium via Playwright (its own browser download cannot work
here), a fresh page per test, and a full-page screenshot under test-results/ when a test fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from studio.testing.browser import CHROMIUM, CHROMIUM_ARGS, RESULTS, VIEWPORT, track_calls


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    """Keep each phase's report on the item so the `page` fixture knows whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(node: pytest.Item) -> bool:
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))


def screenshot_path(nodeid: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")
    return RESULTS / f"{name}.png"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole run (Playwright's own browser download cannot work here)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (.ci/run does) or set STUDIO_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context and page; on failure a full-page screenshot goes to test-results/."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=False)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.page_errors = errors  # JavaScript errors, for tests that want to assert there were none
    track_calls(pg)
    try:
        yield pg
    finally:
        if _failed(request.node):
            RESULTS.mkdir(exist_ok=True)
            path = screenshot_path(request.node.nodeid)
            try:
                pg.screenshot(path=str(path), full_page=True)
                print(f"screenshot of the failure: {path}")
            except Exception as exc:  # the page may be gone (closed by the test); say so, don't mask the failure
                print(f"no screenshot for {request.node.nodeid}: {exc}")
        context.close()
