"""The run pages and the review queue in a real headless Chromium, driven by Selenium: the pages
open without a console error (the written page from a file, the served ones over HTTP), and a
review decision made by clicking and typing in the page -- an accept, an edit refused and then
corrected -- lands in the run's sink, with who and when in `corral review list`.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package (the ``dev``
extra); without them the tests skip, except under CI (``$CI`` set), where they fail: CI installs
them (.ci/run). Screenshots are kept in build/test-artifacts/."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import corral
from corral.cli import main
from tests.cli.test_pages import HELD, make_job, read_csv, start
from tests.conftest import ROOT

ARTIFACTS = ROOT / "build" / "test-artifacts"


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must have them (.ci/run installs chromium and chromium-driver, "
                    "make install installs selenium)")
    pytest.skip(f"{why}: the browser tests are skipped (apt-get install chromium chromium-driver; "
                "make install, or pip install -e '.[dev]' in the Corral checkout)")


def _browser() -> tuple[str, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None)
    if exe is None or driver is None:
        _missing("chromium or chromedriver is not installed")
    assert exe is not None and driver is not None
    return exe, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe, driver = _browser()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("the selenium package is not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,1300", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_page_load_timeout(20)
    try:
        yield d
    finally:
        d.quit()


def severe(d: Any) -> list[dict[str, Any]]:
    """The console's errors since the last look (the log is read and emptied)."""
    return [m for m in d.get_log("browser") if m.get("level") == "SEVERE"]


def click(d: Any, element: Any) -> None:
    """Click ``element`` and wait (10 s at most) for the page it leads to, a form's answer too."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = d.find_element(By.TAG_NAME, "html")
    element.click()

    def left(_: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:  # stale, or (a tab opened meanwhile) "does not belong to the document"
            return True
        return False

    WebDriverWait(d, 10, poll_frequency=0.05).until(left)


def shot(d: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert d.save_screenshot(str(path)), path
    assert path.stat().st_size > 5_000
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    job = make_job(tmp_path)
    res = corral.run(job)
    assert res.review == len(HELD)
    server, t = start(who="tester")
    try:
        yield f"http://127.0.0.1:{server.port}", res.run, tmp_path
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_the_console_check_catches_a_script_error(browser: Any):
    """The check below can fail: a page with a script error is caught."""
    browser.get("data:text/html,<p>x</p><script>throw new Error('boom')</script>")
    assert any("boom" in m["message"] for m in severe(browser))


def test_pages_open_without_console_errors(browser: Any, served: tuple[str, str, Path]):
    from selenium.webdriver.common.by import By

    base, run, folder = served
    severe(browser)  # empty the log
    page = folder / "run.html"
    r = CliRunner().invoke(main, ["report", run, "--html", str(page)])
    assert r.exit_code == 0, r.output
    browser.get(page.as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Run {run} · job tickets"
    assert not severe(browser)
    browser.get(f"{base}/run/{run}")
    assert browser.find_element(By.ID, "rows-equation").text.startswith("6 in = 2 written")
    assert len(browser.find_elements(By.TAG_NAME, "svg")) >= 2
    assert browser.find_element(By.ID, "cost-total").text == "$0.0000"
    shot(browser, "run-page.png")
    assert not severe(browser)
    click(browser, browser.find_element(By.LINK_TEXT, "Work the review queue"))
    assert browser.find_element(By.ID, "held-count").text.startswith("4 rows held for review")
    keys = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.queue td:first-child a")]
    assert keys == HELD
    shot(browser, "review-queue.png")
    browser.get(f"{base}/")
    click(browser, browser.find_element(By.LINK_TEXT, run))
    assert browser.current_url == f"{base}/run/{run}"
    assert not severe(browser)


def test_a_decision_made_in_the_page_reaches_the_sink(browser: Any, served: tuple[str, str, Path]):
    from selenium.webdriver.common.by import By

    base, run, folder = served
    severe(browser)
    browser.get(f"{base}/run/{run}/review")

    def decide(key: str, who: str, button: str, answer: str | None = None) -> None:
        click(browser, browser.find_element(By.LINK_TEXT, key))
        assert "state review" in browser.find_element(By.ID, "state").text
        field = browser.find_element(By.ID, "who")
        field.clear()
        field.send_keys(who)
        if answer is not None:
            box = browser.find_element(By.ID, "answer")
            box.clear()
            box.send_keys(answer)
        click(browser, browser.find_element(By.ID, button))

    # accept t1
    decide("t1", "alice", "accept")
    assert browser.find_element(By.ID, "flash").text == "Record t1: accepted by alice."
    # an edit the step's labels refuse: the form again, with why, nothing written
    decide("t2", "bob", "edit", '{"category": "nonsense"}')
    assert "'nonsense' is not one of" in browser.find_element(By.ID, "error").text
    assert browser.find_element(By.ID, "answer").get_attribute("value") == '{"category": "nonsense"}'
    shot(browser, "review-edit-refused.png")
    # corrected, written
    box = browser.find_element(By.ID, "answer")
    box.clear()
    box.send_keys('{"category": "billing"}')
    click(browser, browser.find_element(By.ID, "edit"))
    assert browser.find_element(By.ID, "flash").text == "Record t2: edited and written by bob."
    decided = browser.find_elements(By.CSS_SELECTOR, "table.decisions tbody tr")
    assert [r.text.split()[:3] for r in decided] == [["t2", "edit", "bob"], ["t1", "accept", "alice"]]
    shot(browser, "review-decided.png")
    assert not severe(browser)

    sink = read_csv(folder / "out" / "tickets.csv")
    assert sink["t1"]["category"] == "shipping" and sink["t2"]["category"] == "billing"
    assert set(read_csv(folder / "out" / "tickets.review.csv")) == {"t4", "t5"}
    r = CliRunner().invoke(main, ["review", "list", run, "--json"])
    assert r.exit_code == 0, r.output
    made = {d["key"]: d["decision"] for d in json.loads(r.stdout)["decided"]}
    assert {k: (d["action"], d["who"]) for k, d in made.items()} == {"t1": ("accept", "alice"), "t2": ("edit", "bob")}
    assert all(d["when"] for d in made.values())


def test_decisions_from_two_tabs_at_once_are_one_each(browser: Any, served: tuple[str, str, Path]):
    """Two people deciding the same row from the pages they opened: one decision is made, the
    other is told who made it."""
    from selenium.webdriver.common.by import By

    base, run, folder = served
    severe(browser)
    browser.get(f"{base}/run/{run}/record/t5")
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{base}/run/{run}/record/t5")
    click(browser, browser.find_element(By.ID, "reject"))
    assert "Record t5: rejected by tester." == browser.find_element(By.ID, "flash").text
    browser.close()
    browser.switch_to.window(first)
    click(browser, browser.find_element(By.ID, "accept"))
    assert "was rejected by tester at" in browser.find_element(By.ID, "error").text
    assert set(read_csv(folder / "out" / "tickets.quarantine.csv")) == {"t5"}
    assert not severe(browser)
