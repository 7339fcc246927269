"""How long an annotator waits for the next item after submitting, with a ready queue.

Two figures, one run:
- store: ``submit`` + ``next_task`` on the SQLite file (the work the page does per item), over a
  database of N ready tasks plus M already ranked ones (so the queue query is not flattered);
- browser: a real ``streamlit run`` driven by headless Debian chromium; the clock starts when
  Enter is pressed in the ranking field and stops when the next prompt is on screen.

    python bench/next_item_latency.py [--items 30] [--history 5000] [--only browser]
                                      [--browser-history 0] [--keyboard]

``--browser-history`` gives the browser's database that many items already ranked by someone
else, as ``--history`` does for the store figure. ``--keyboard`` types the ranking into the
focused page, as an annotator does, instead of filling the field by its label (so it also checks
that the ranking box holds the focus). The load average is recorded before and after: the
figures mean little without it on a shared machine.

Writes bench/out/next_item_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.app_server import CHROMIUM, CHROMIUM_ARGS, start_app  # noqa: E402
from rlhf_loop.prompt_import import ParsedPrompts, PromptRow  # noqa: E402
from rlhf_loop.store.annotators import annotator_id  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.store.generations import (  # noqa: E402
    Sample,
    add_comparisons,
    live_policy_version,
)
from rlhf_loop.store.prompts import add_prompts  # noqa: E402
from rlhf_loop.store.submissions import submit  # noqa: E402
from rlhf_loop.store.tasks import next_task  # noqa: E402

K = 4
# Usable: one ranking box, and an empty one. The new prompt is drawn before the new form replaces
# the old one, so for a moment the page shows the new prompt above the last item's box, which
# still holds what was typed there; a ranking typed into it then would be lost.
SETTLED = (
    "(() => { const boxes = document.querySelectorAll('input[aria-label=\"Ranking\"]');"
    " return boxes.length === 1 && boxes[0].value === ''; })()"
)
FOCUSED = "document.activeElement?.getAttribute('aria-label') === 'Ranking'"
TIMEOUT = 1800.0


def fill(db_path: Path, n: int, prefix: str) -> None:
    """n ready tasks whose prompts are '<prefix> 0', '<prefix> 1', ... in serving order."""
    db = open_db(db_path)
    rows = [PromptRow(text=f"{prefix} {i}", line=i + 1) for i in range(n)]
    add_prompts(db, ParsedPrompts(rows=rows, duplicates=[], blank_lines=0), "bench")
    ids = [r["id"] for r in db["prompts"].rows_where("text LIKE ?", [f"{prefix} %"], order_by="id")]
    samples = [
        [Sample(f"answer {j} to {pid}: " + "words " * 30, 40, True) for j in range(K)]
        for pid in ids
    ]
    add_comparisons(db, live_policy_version(db, "bench"), ids, samples, {"model": "bench"})


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "n": len(ordered),
        "median_s": statistics.median(ordered),
        "p90_s": ordered[int(0.9 * (len(ordered) - 1))],
        "p95_s": ordered[int(0.95 * (len(ordered) - 1))],
        "max_s": ordered[-1],
    }


def rank_history(db_path: Path, history: int) -> None:
    """``history`` items ranked by someone else, so the page's queries run over a used table."""
    if not history:
        return
    fill(db_path, history, "old")
    db = open_db(db_path)
    old = annotator_id(db, "history")
    while (task := next_task(db, old, 1, TIMEOUT)) is not None:
        submit(db, old, task.comparison_id, "ranked", [1, 2, 2, 3])


def bench_store(workdir: Path, items: int, history: int) -> dict[str, float]:
    db_path = workdir / "store.db"
    rank_history(db_path, history)
    db = open_db(db_path)
    fill(db_path, items + 1, "new")
    me = annotator_id(db, "me")
    task = next_task(db, me, 1, TIMEOUT)
    times = []
    for _ in range(items):
        started = time.perf_counter()
        submit(db, me, task.comparison_id, "ranked", [1, 2, 2, 3])
        task = next_task(db, me, 1, TIMEOUT)
        times.append(time.perf_counter() - started)
    return summary(times)


def bench_browser(
    workdir: Path, items: int, history: int = 0, keyboard: bool = False
) -> dict[str, dict[str, float]]:
    """Seconds from Enter to the next prompt on screen, and to the page being usable again."""
    from playwright.sync_api import sync_playwright

    rank_history(workdir / "rlhf.db", history)
    fill(workdir / "rlhf.db", items + 1, "bench prompt")
    (workdir / "empty.toml").write_text("")
    env = os.environ | {
        "RLHF_LOOP_CONFIG": str(workdir / "empty.toml"),
        "RLHF_LOOP_DATA_DIR": str(workdir),
        "RLHF_LOOP_AUTO_START_WORKER": "false",
    }
    server, url = start_app(env)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{url}/?annotator=bench")
            page.get_by_text("bench prompt 0", exact=True).wait_for(timeout=60_000)
            page.wait_for_function(SETTLED, timeout=30_000)
            shown, settled = [], []
            for i in range(items):
                if keyboard:  # what an annotator does: type into the box that has the focus
                    page.wait_for_function(FOCUSED, timeout=30_000)
                    page.keyboard.type("1223")
                    started = time.perf_counter()
                    page.keyboard.press("Enter")
                else:
                    field = page.get_by_label("Ranking")
                    field.fill("1 2 2 3")
                    started = time.perf_counter()
                    field.press("Enter")
                page.get_by_text(f"bench prompt {i + 1}", exact=True).wait_for(timeout=30_000)
                shown.append(time.perf_counter() - started)
                page.wait_for_function(SETTLED, timeout=30_000)  # usable: one ranking field
                settled.append(time.perf_counter() - started)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    db = open_db(workdir / "rlhf.db")
    ranked = db["rankings"].count_where("annotator_id = ?", [annotator_id(db, "bench")])
    assert ranked == items, f"expected {items} rankings stored, found {ranked}"
    return {"shown": summary(shown), "settled": summary(settled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=30)
    parser.add_argument("--history", type=int, default=5000)
    parser.add_argument("--browser-history", type=int, default=0)
    parser.add_argument("--keyboard", action="store_true")
    parser.add_argument("--only", choices=["store", "browser"])
    args = parser.parse_args()
    result: dict = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "browser").mkdir()
        if args.only != "browser":
            result["store"] = bench_store(workdir, args.items, args.history)
            result["history_rankings"] = args.history
        if args.only != "store":
            result["browser"] = bench_browser(
                workdir / "browser", args.items, args.browser_history, args.keyboard
            )
            result["browser_history_rankings"] = args.browser_history
            result["keyboard"] = args.keyboard
    result["load_average_after"] = os.getloadavg()
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "next_item_latency.json").write_text(json.dumps(result, indent=2))
    figures = {"store": result.get("store")} | {
        f"browser {stage}": r for stage, r in result.get("browser", {}).items()
    }
    for name, r in figures.items():
        if r is None:
            continue
        print(
            f"{name:16s} submit -> next item: median {r['median_s'] * 1000:.0f} ms, "
            f"p95 {r['p95_s'] * 1000:.0f} ms, max {r['max_s'] * 1000:.0f} ms over {r['n']} items"
        )
    load = (result["load_average_before"][0], result["load_average_after"][0])
    print(f"load average (1 min) before {load[0]:.2f}, after {load[1]:.2f}")


if __name__ == "__main__":
    main()
