"""The Dagster UI as a person sees it: `sync-assets demo` (embedded PostgreSQL, ESI sandbox, `dagster
dev`) driven by headless Chromium through Playwright.

The freshness windows of `esi/market_prices` are shortened to warn 60 s / fail 120 s and the
FreshnessDaemon ticks every 5 s, so the test can watch the asset go from "Passing" (just after a
Materialize click) to "Failed" (once nothing has materialized it for the fail window). The asset page
reads freshness once when it loads, so the test waits for the daemon's state (GraphQL) and then loads
the page and asserts what it shows. It never asserts on elapsed time; every wait has a generous bound.
The other datasets' schedules are set to a cron that does not fire, to keep the machine quiet.

Screenshots go to the test's temporary directory, or to the directory named by
SYNC_ASSETS_UI_SCREENSHOTS (`SYNC_ASSETS_UI_SCREENSHOTS=docs make test` refreshes docs/ui_asset_*.png
for the README) so an ordinary test run leaves the work tree untouched.

Needs /usr/bin/chromium (Debian's `chromium`) and the `playwright` package: `make test` installs both.
Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from sync_assets.apis.esi.datasets import ESI_DATASETS
from sync_assets.orchestration.settings import variable
from sync_assets.db.embedded import stop_embedded_postgres

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("SYNC_ASSETS_CHROMIUM") or "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling Google services, which floods a
# closed network with failing requests; --headless etc. keep it a plain page renderer.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ASSET_PATH = ["esi", "market_prices"]
ASSET = "/".join(ASSET_PATH)
DATASET = next(d for d in ESI_DATASETS if [d.api, d.name] == ASSET_PATH)
WARN_S, FAIL_S = 60, 120
NEVER = "0 0 1 1 *"  # a cron that does not fire during a test run (Jan 1, 00:00 UTC)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _requirements() -> None:
    missing = []
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright)")
    if missing:
        message = "UI test needs " + " and ".join(missing) + "; `make test` installs them"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI runs `make test`: a missing dependency is a broken Makefile, not a skip
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    def __init__(self, url: str, home: Path, log_path: Path):
        self.url, self.home, self.log_path = url, home, log_path

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


ASSET_NODE = """
query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename
  ... on AssetNode { freshnessStatusInfo { freshnessStatus } } } }
"""
RECENT_RUNS = """
{ runsOrError(limit: 20) { ... on Runs { results { runId jobName status } } } }
"""
RUN_STATUS = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
RUN_EVENTS = """
query($id: ID!) { runOrError(runId: $id) { ... on Run {
  eventConnection(afterCursor: null) { events { __typename
    ... on ExecutionStepFailureEvent { stepKey error { message } }
    ... on RunFailureEvent { message }
    ... on EngineEvent { message error { message } } } } } } }
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    _requirements()
    base = tmp_path_factory.mktemp("ui_demo")
    home = base / "dagster_home"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SYNC_ASSETS_DATABASE_URL", "DAGSTER_PG_URL", "SYNC_ASSETS_ESI_URL")}
    env.update(
        DAGSTER_HOME=str(home),
        FRESHNESS_DAEMON_INTERVAL_SECONDS="5",
        **{variable("FRESHNESS", DATASET): f"{WARN_S},{FAIL_S}"},  # SYNC_ASSETS_FRESHNESS__ESI__MARKET_PRICES
    )
    # Keep the 2-core machine quiet: only esi/market_prices keeps its real schedule (7 * * * *; if
    # it fires during the test it only delays "Failed" by one fail window, which the polling absorbs).
    env.update({variable("CRON", d): NEVER for d in ESI_DATASETS if d is not DATASET})
    log_path = base / "demo.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("sync-assets")), "demo", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    demo = Demo(f"http://127.0.0.1:{port}", home, log_path)
    try:
        deadline = time.monotonic() + 300
        while True:  # the webserver answers, and the code location is loaded
            assert process.poll() is None, demo.log_tail()
            try:
                node = demo.graphql(ASSET_NODE, {"key": {"path": ASSET_PATH}})["assetNodeOrError"]
                if node["__typename"] == "AssetNode":
                    break
            except (httpx.HTTPError, AssertionError, ValueError):
                pass
            assert time.monotonic() < deadline, demo.log_tail()
            time.sleep(1)
        yield demo
    finally:
        _stop_demo(process)
        stop_embedded_postgres(home / "pgdata")
        log.close()


def _stop_demo(process: subprocess.Popen) -> None:
    """SIGTERM to `sync-assets` alone: it forwards it to `dagster dev`, which stops the webserver,
    daemon and code server, then stops the sandbox. (SIGTERM to the whole group makes `dagster dev`
    see it twice and hang.) Whatever is left of the process group is killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers (run workers, a hung child); our own session
    except ProcessLookupError:
        pass
    process.wait(30)


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    target = os.environ.get("SYNC_ASSETS_UI_SCREENSHOTS")
    directory = (ROOT / target) if target and not Path(target).is_absolute() else Path(target or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _field(page, label: str):
    """The value box under a label of the asset page's Status section (not the sidebar's
    collapsible section of the same name, whose label sits in a button)."""
    return page.locator(f"xpath=//span[normalize-space(.)='{label}' and not(ancestor::button)]/parent::div").first


def _freshness_status(demo: Demo) -> str | None:
    node = demo.graphql(ASSET_NODE, {"key": {"path": ASSET_PATH}})["assetNodeOrError"]
    return (node.get("freshnessStatusInfo") or {}).get("freshnessStatus")


def _wait_for_freshness(page, demo: Demo, url: str, wanted: str, timeout_s: float) -> bool:
    """Wait until the FreshnessDaemon has recorded `wanted` (GraphQL, cheap to poll), then load the
    asset page and return whether its freshness field shows it; False when the bound passes first.
    The page reads freshness once when it loads, so it is loaded again rather than watched."""
    from playwright.sync_api import expect

    api_status = {"Passing": "HEALTHY", "Warning": "WARNING", "Failed": "DEGRADED"}[wanted]
    deadline = time.monotonic() + timeout_s
    while _freshness_status(demo) != api_status:
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    freshness = _field(page, "Freshness policy")
    for _ in range(3):  # a reload or two if the page raced the daemon's state change
        page.goto(url, wait_until="domcontentloaded")
        expect(freshness).to_contain_text(re.compile("Passing|Warning|Failed|Not evaluated"), timeout=90_000)
        if wanted in freshness.inner_text():
            return True
        page.wait_for_timeout(2000)
    return False


def _run_problems(demo: Demo, run_id: str) -> list[str]:
    events = demo.graphql(RUN_EVENTS, {"id": run_id})["runOrError"]["eventConnection"]["events"]
    problems = []
    for event in events:
        error = (event.get("error") or {}).get("message")
        if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent") or error:
            problems.append(f"{event['__typename']}: {error or event.get('message')}")
    return problems


def _materialize_from_the_ui(page, demo: Demo) -> str:
    """Click Materialize on the asset page; returns the id of the run, once it succeeded."""
    from playwright.sync_api import expect

    button = page.get_by_role("button", name=re.compile(r"Materialize$"))
    expect(button).to_be_enabled(timeout=90_000)
    button.click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    expect(toast).to_be_visible(timeout=90_000)
    short_id = re.search(r"Launched run ([0-9a-f]{8})", toast.inner_text()).group(1)
    runs = demo.graphql(RECENT_RUNS)["runsOrError"]["results"]
    run_id = next(r["runId"] for r in runs if r["runId"].startswith(short_id))
    deadline, status = time.monotonic() + 300, None
    while time.monotonic() < deadline:
        status = demo.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", (status, _run_problems(demo, run_id), demo.log_tail())
    return run_id


def test_asset_page_shows_materialization_and_freshness_passing_then_failed(demo: Demo, screenshot_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, started = f"{demo.url}/assets/{ASSET}", time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded")
            expect(page.get_by_text("Never materialized")).to_be_visible(timeout=120_000)
            # The policy from SYNC_ASSETS_FRESHNESS__ESI__MARKET_PRICES, in the sidebar.
            expect(page.get_by_text("Fails if more than 2 minutes since last materialization")).to_be_visible()

            # Materialize, then see "Passing". The warn window is only 60 s, so a very slow machine
            # may show "Warning" first: materialize again then (each click is a real sync).
            passing, run_id = False, None
            for _attempt in range(3):
                run_id = _materialize_from_the_ui(page, demo)
                if _wait_for_freshness(page, demo, url, "Passing", timeout_s=WARN_S):
                    passing = True
                    break
            assert passing, ("freshness never showed Passing", _freshness_status(demo), demo.log_tail())
            # "Latest materialization: N seconds ago", linking to the run the click launched.
            latest = _field(page, "Latest materialization")
            expect(latest).to_contain_text(re.compile(r"\bago\b"))
            expect(latest.locator(f"a[href^='/runs/{run_id}']")).to_be_visible()
            expect(_field(page, "Freshness policy")).to_contain_text("Passing")
            page.screenshot(path=str(screenshot_dir / "ui_asset_fresh.png"))
            print(f"passing after {_attempt + 1} materialization(s), {time.monotonic() - started:.0f}s into the test")

            # Nothing materializes it now: past the fail window the daemon marks it failed. Bound:
            # several fail windows (a scheduled run at :07 would restart the window once).
            failed = _wait_for_freshness(page, demo, url, "Failed", timeout_s=4 * FAIL_S + 120)
            assert failed, ("freshness never showed Failed", _freshness_status(demo), demo.log_tail())
            expect(_field(page, "Freshness policy")).to_contain_text("Failed")
            expect(latest).to_contain_text(re.compile(r"\bago\b"))  # a scheduled run at :07 may be the latest now
            assert _freshness_status(demo) == "DEGRADED"
            page.screenshot(path=str(screenshot_dir / "ui_asset_stale.png"))
            print(f"failed {time.monotonic() - started:.0f}s into the test; screenshots in {screenshot_dir}")
        finally:
            browser.close()
