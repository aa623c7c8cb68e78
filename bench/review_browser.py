"""A review decision made in the browser reaches the sink, and `corral review list` shows who
decided and when (issue 13's acceptance figure).

In a fresh folder and store: two runs of one job over SMS messages (../shared/data/sms_spam) on
the fake model as a noisy labeler with log-probabilities, `min_confidence` holding the unsure
answers for review (the second run, over other messages, is the one worked; the first is its
previous run for the label mix). Then `corral serve --port 0` in its own process, and a headless
Chromium driven by Selenium opens the run's review queue, accepts the first held row (as alice)
and corrects the second's label (as bob) by clicking and typing in the pages. The screenshot of
the queue after the decisions is saved (bench/results/review_browser.png); the script prints the
two rows as the sink file has them and the `corral review list` lines of the decisions, and
checks they agree with what was clicked.

    .venv/bin/python bench/review_browser.py [--rows 120] [--sms PATH] [--png PATH] [--keep]

Needs chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium (the
dev extra).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, SMS_TSV  # noqa: E402

CORRAL = [sys.executable, "-m", "corral"]
JOB = """name: sms
source: messages.csv
key: id
model:
  name: fake
  truth: truth.csv
  accuracy: 0.85
  logprobs: true
  latency: [0.002, 0.02]
  seed: {seed}
steps:
  - name: label
    task: classify
    input: "{{text}}"
    labels: [ham, spam]
    min_confidence: 0.4
sink: out/sms.csv
"""


def messages(path: Path, n: int) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [(r["Label"], r["SMS"]) for r in rows[: 2 * n]]


def write_inputs(folder: Path, rows: list[tuple[str, str]], offset: int) -> None:
    with open(folder / "messages.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows((f"m{offset + i:04d}", text) for i, (_, text) in enumerate(rows))


def run_job(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    p = subprocess.run([*CORRAL, "run", "job.yaml", "--json"], cwd=folder, env=env, capture_output=True,
                       text=True, timeout=300)
    if p.returncode not in (0, 7):  # 7: monitoring warned (the two samples' mixes differ)
        sys.exit(f"corral run failed ({p.returncode}): {p.stderr}")
    return dict(json.loads(p.stdout))


def chrome() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if exe is None or not Path(driver).exists():
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,820", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def click(d: Any, element: Any) -> None:
    """Click and wait for the page the click leads to (10 s at most)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = d.find_element(By.TAG_NAME, "html")
    element.click()

    def left(_: Any) -> bool:
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    WebDriverWait(d, 10, poll_frequency=0.05).until(left)


def decide_in_browser(d: Any, base: str, run: str, truth: dict[str, str]) -> tuple[str, str, str]:
    """As the queue lists them: accept (as alice) the first held row whose held label is right,
    and correct (as bob) the first whose label is wrong (``truth``: key -> the data set's label).
    Returns the two keys and the label written for the second."""
    from selenium.webdriver.common.by import By

    d.get(f"{base}/run/{run}/review")
    held = {}
    for tr in d.find_elements(By.CSS_SELECTOR, "table.queue tbody tr"):
        key, _, answers = (td.text for td in tr.find_elements(By.TAG_NAME, "td"))
        held[key] = json.loads(answers)["label"]
    right = [k for k, label in held.items() if label == truth[k]]
    wrong = [k for k, label in held.items() if label != truth[k]]
    assert right and wrong, f"the run holds {len(held)} rows for review; give more --rows"
    accepted, edited = right[0], wrong[0]

    def form(key: str, who: str) -> None:
        click(d, d.find_element(By.LINK_TEXT, key))
        box = d.find_element(By.ID, "who")
        box.clear()
        box.send_keys(who)

    form(accepted, "alice")
    click(d, d.find_element(By.ID, "accept"))
    form(edited, "bob")
    fixed = truth[edited]
    box = d.find_element(By.ID, "answer")
    box.clear()
    box.send_keys(json.dumps({"label": fixed}))
    d.find_element(By.ID, "note").send_keys("read it: the label was wrong")
    click(d, d.find_element(By.ID, "edit"))
    flash = d.find_element(By.ID, "flash").text
    assert flash == f"Record {edited}: edited and written by bob.", flash
    errors = [m for m in d.get_log("browser") if m.get("level") == "SEVERE"]
    assert not errors, errors
    return accepted, edited, fixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=120, help="messages per run (two runs)")
    ap.add_argument("--sms", type=Path, default=SMS_TSV, help="the SMS spam collection (TSV: Label, SMS)")
    ap.add_argument("--png", type=Path, default=RESULTS / "review_browser.png")
    ap.add_argument("--keep", action="store_true", help="keep the folder with the store and the sink")
    args = ap.parse_args()
    if not args.sms.exists():
        sys.exit(f"no {args.sms}: give --sms PATH (../shared/data/sms_spam/SMSSpamCollection.tsv)")
    rows = messages(args.sms, args.rows)
    folder = Path(tempfile.mkdtemp(prefix="corral-review-browser-"))
    # the processes run in the folder: this checkout's Corral, whatever the working directory
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "CORRAL_STORE": str(folder / "corral.db"), "PYTHONPATH": path}
    with open(folder / "truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows((text, label) for label, text in rows)
    (folder / "job.yaml").write_text(JOB.format(seed=1), encoding="utf-8")
    write_inputs(folder, rows[: args.rows], 0)
    first = run_job(folder, env)
    write_inputs(folder, rows[args.rows:], args.rows)
    second = run_job(folder, env)
    run = second["run"]
    print(f"runs: {first['run']} (previous), {run}: {second['rows']}")

    server = subprocess.Popen([*CORRAL, "serve", "--port", "0"], cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    d = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert m, line
        base = m.group(1)
        d = chrome()
        t0 = time.perf_counter()
        truth = {f"m{i:04d}": label for i, (label, _) in enumerate(rows)}
        accepted, edited, fixed = decide_in_browser(d, base, run, truth)
        took = time.perf_counter() - t0
        # the queue after the decisions: what was done, the rows still held, who decided when
        args.png.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(args.png))
    finally:
        if d is not None:
            d.quit()
        server.terminate()
        server.wait(10)

    with open(folder / "out" / "sms.csv", newline="", encoding="utf-8") as f:
        sink = {r["id"]: r for r in csv.DictReader(f)}
    listed = subprocess.run([*CORRAL, "review", "list", run], cwd=folder, env=env, capture_output=True,
                            text=True, check=True).stdout
    decided = json.loads(subprocess.run([*CORRAL, "review", "list", run, "--json"], cwd=folder, env=env,
                                        capture_output=True, text=True, check=True).stdout)["decided"]
    who = {r["key"]: (r["decision"]["action"], r["decision"]["who"]) for r in decided}
    assert who == {accepted: ("accept", "alice"), edited: ("edit", "bob")}, who
    assert sink[edited]["label"] == fixed and accepted in sink
    print(f"decided in the browser in {took:.1f} s (two decisions, five pages): {accepted} accepted "
          f"(its held label is the data set's), {edited} corrected to {fixed}")
    print("the sink's header and the two rows, as out/sms.csv has them:")
    lines = (folder / "out" / "sms.csv").read_text(encoding="utf-8").splitlines()
    print(" ", lines[0])
    for key in (accepted, edited):
        print(" ", next(ln for ln in lines if ln.startswith(key + ",")))
    print("corral review list:")
    for ln in listed.split("Decided:")[1].strip("\n").split("\n\n")[0].splitlines():
        print(" ", ln.rstrip())
    print(f"screenshot: {args.png} ({args.png.stat().st_size / 1024:.0f} KB)")
    if args.keep:
        print(f"folder kept: {folder} (CORRAL_STORE={folder / 'corral.db'})")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
