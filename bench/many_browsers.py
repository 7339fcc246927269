"""Many browsers at once on one Streamlit server, while a worker trains; then the server restarted
under them.

One ``streamlit run app.py`` (headless, loopback) on a fresh data dir holding enough ready items,
a real worker training the reward model throughout (so its CPU and writes compete, as in
production), and one headless chromium with N contexts, each signed in as its own annotator and
ranking by keyboard for a fixed window. Per N: rankings acknowledged (the page showed the next
item) against rankings stored (must match; no (annotator, item) stored twice), next-item p50/p95
(Enter -> next prompt on screen and the box usable), the server process's CPU seconds per
session-minute, the load average. Then the restart scenario: ``--restart-sessions`` pages rank,
the server is SIGKILLed mid-window and started again on the same port; every page must reconnect
by itself, show an item after a reload and take the next ranking, and nothing acknowledged may be
missing from the database.

``--think S`` paces each annotator as a person: before each ranking it reads for S seconds (drawn
uniformly from 0.5 S to 1.5 S), so N sessions ask for about N / S rankings a second. Without it
they rank as fast as the page allows, which measures throughput, not how many people a server
holds: there chromium's N pages, on the same cores, are most of the load.

    nice -n 10 python bench/many_browsers.py [--sessions 1 5 10 15] [--window 45]
                                             [--restart-sessions 10] [--think 0]

Writes bench/out/many_browsers.json and .png (p50/p95 against N); with --think S,
many_browsers_think<S>.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from playwright.async_api import Error as PageError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.app_server import CHROMIUM, CHROMIUM_ARGS, free_port  # noqa: E402
from bench.concurrent_annotators import fill, start_worker, wait_for_training  # noqa: E402
from bench.figures import pyplot, save  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402

OUT = REPO / "bench" / "out"
# Usable with a new item: one empty ranking box and one prompt of the bench's, not ``old``. The
# new prompt is drawn before the new form replaces the old one (bench/next_item_latency.py).
NEXT_ITEM = """(old) => {
  const boxes = document.querySelectorAll('input[aria-label="Ranking"]');
  if (boxes.length !== 1 || boxes[0].value !== '') return false;
  const shown = [...document.querySelectorAll('[data-testid="stText"]')]
    .map(e => e.textContent.trim()).filter(t => /^bench prompt \\d+$/.test(t));
  return shown.length === 1 && shown[0] !== old ? shown[0] : false;
}"""
FOCUSED = "document.activeElement?.getAttribute('aria-label') === 'Ranking'"
ITEM_TIMEOUT_MS = 30_000
# A submit unanswered this long during the restart scenario was cut off by the kill.
CUT_OFF_MS = 15_000
# Every page ranks at least this long after the restart, however late it got back.
AFTER_RESTART_S = 10.0
HOLDS_P95_S = 1.0  # the bar for "one server holds N annotators"


@dataclass
class Session:
    """One annotator's page: what it was told, and how long each next item took."""

    name: str
    acknowledged: int = 0
    waits_s: list[float] = field(default_factory=list)
    cut_off: int = 0  # submits whose answer the restart swallowed (stored or not)
    reconnected: bool | None = None  # None: its page never lost an answer to the restart
    acknowledged_at: list[float] = field(default_factory=list)  # time.monotonic()


class Server:
    """``streamlit run app.py`` on a fixed loopback port, killable and restartable there."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: psutil.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "streamlit", "run", "app.py"]
        command += ["--server.headless", "true", "--server.address", "127.0.0.1"]
        command += ["--server.port", self.url.rsplit(":", 1)[1]]
        self.process = psutil.Popen(command, cwd=REPO, env=self.env, stdout=-3, stderr=-3)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("streamlit did not become healthy")

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


async def shown_item(page, old: str | None, timeout_ms: float = ITEM_TIMEOUT_MS) -> str:
    handle = await page.wait_for_function(NEXT_ITEM, arg=old, timeout=timeout_ms)
    return await handle.json_value()


# Pages opening at once: dozens loading together on 2 cores time out (people arrive one by one).
_OPENING = asyncio.Semaphore(4)


async def open_session(browser, url: str, name: str) -> tuple[object, str]:
    async with _OPENING:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"{url}/?annotator={name}", timeout=120_000)
        return page, await shown_item(page, None, 120_000)


async def submit(page) -> None:
    """What an annotator does: type the ranking into the box holding the focus, press Enter."""
    try:
        await page.wait_for_function(FOCUSED, timeout=2_000)
    except PageError:  # focus lost (e.g. after a reload): click the box
        await page.click('input[aria-label="Ranking"]')
    await page.keyboard.type("1223")
    await page.keyboard.press("Enter")


async def rank_until(
    page,
    item: str,
    session: Session,
    stop_at: float,
    timeout_ms: float = ITEM_TIMEOUT_MS,
    think_s: float = 0.0,
) -> str:
    """Ranks item after item until ``stop_at``, reading each for about ``think_s``; the last
    submit is awaited, so every submit made is acknowledged or an error."""
    rng = random.Random(session.name)
    while time.monotonic() < stop_at:
        if think_s:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)
            if time.monotonic() >= stop_at:
                break
        await submit(page)
        started = time.perf_counter()
        item = await shown_item(page, item, timeout_ms)
        session.waits_s.append(time.perf_counter() - started)
        session.acknowledged += 1
        session.acknowledged_at.append(time.monotonic())
    return item


def stored(db_path: Path, names: list[str]) -> dict[str, object]:
    """Rankings stored per annotator, and (annotator, item) pairs stored more than once."""
    db = open_db(db_path)
    marks = ",".join("?" * len(names))
    per_name = dict(
        db.execute(
            f"SELECT a.name, count(*) FROM rankings r JOIN annotators a ON a.id = r.annotator_id"
            f" WHERE a.name IN ({marks}) GROUP BY a.name",
            names,
        ).fetchall()
    )
    twice = db.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM rankings r JOIN annotators a ON"
        f" a.id = r.annotator_id WHERE a.name IN ({marks})"
        f" GROUP BY r.annotator_id, r.comparison_id HAVING count(*) > 1)",
        names,
    ).fetchone()[0]
    served_twice = db.execute(
        "SELECT count(*) FROM (SELECT comparison_id FROM rankings"
        " GROUP BY comparison_id HAVING count(*) > 1)"
    ).fetchone()[0]
    return {"per_name": per_name, "duplicate_pairs": twice, "items_ranked_twice": served_twice}


async def crowd(
    browser, server: Server, db_path: Path, n: int, window_s: float, think_s: float
) -> dict:
    """N sessions rank for ``window_s``; the figures for this N."""
    sessions = [Session(f"n{n}-annotator{i}") for i in range(n)]
    opened = await asyncio.gather(*(open_session(browser, server.url, s.name) for s in sessions))
    cpu_before, load_before = server.cpu_s(), os.getloadavg()
    started = time.monotonic()
    stop_at = started + window_s
    await asyncio.gather(
        *(
            rank_until(page, item, s, stop_at, think_s=think_s)
            for (page, item), s in zip(opened, sessions, strict=True)
        )
    )
    elapsed = time.monotonic() - started
    cpu = server.cpu_s() - cpu_before
    for page, _ in opened:
        await page.context.close()
    waits = [w for s in sessions for w in s.waits_s]
    found = stored(db_path, [s.name for s in sessions])
    acknowledged = sum(s.acknowledged for s in sessions)
    in_db = sum(found["per_name"].values())
    mismatched = [s.name for s in sessions if found["per_name"].get(s.name, 0) != s.acknowledged]
    return {
        "sessions": n,
        "window_s": elapsed,
        "acknowledged": acknowledged,
        "stored": in_db,
        "sessions_whose_count_differs": mismatched,
        "duplicate_annotator_item_rows": found["duplicate_pairs"],
        "items_ranked_by_two": found["items_ranked_twice"],
        "rankings_per_s": acknowledged / elapsed,
        "next_item_p50_s": statistics.median(waits),
        "next_item_p95_s": quantile(waits, 0.95),
        "next_item_max_s": max(waits),
        "server_cpu_s": cpu,
        "server_cpu_s_per_session_minute": cpu / (n * elapsed / 60),
        # steadier than the above on a crowded machine: the server's work per ranking
        "server_cpu_ms_per_ranking": 1000 * cpu / max(acknowledged, 1),
        "server_cpu_share_of_one_core": cpu / elapsed,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }


async def ride_restart(page, item: str, s: Session, stop_at: float, restarted) -> None:
    """Ranks until the server dies; reconnects after its restart, reloads, ranks on to the end."""
    try:
        await rank_until(page, item, s, stop_at, CUT_OFF_MS)
        return
    except PageError:  # the kill swallowed the answer to the last submit
        s.cut_off += 1
    await restarted.wait()
    status = page.get_by_test_id("stConnectionStatus")
    try:
        await status.wait_for(state="detached", timeout=60_000)  # reconnected by itself
        s.reconnected = True
    except PageError:
        s.reconnected = False
    # A restarted server does not know the old page's widgets: a reload makes the page live.
    await page.reload()
    item = await shown_item(page, None, 120_000)
    await rank_until(page, item, s, max(stop_at, time.monotonic() + AFTER_RESTART_S))


async def restart_scenario(browser, server: Server, db_path: Path, n: int, window_s: float):
    """N sessions rank; the server is SIGKILLed a third into the window and started again."""
    sessions = [Session(f"restart-annotator{i}") for i in range(n)]
    opened = await asyncio.gather(*(open_session(browser, server.url, s.name) for s in sessions))
    restarted = asyncio.Event()
    stop_at = time.monotonic() + window_s
    riders = asyncio.gather(
        *(
            ride_restart(page, item, s, stop_at, restarted)
            for (page, item), s in zip(opened, sessions, strict=True)
        )
    )
    await asyncio.sleep(window_s / 3)
    acknowledged_at_kill = sum(s.acknowledged for s in sessions)
    server.kill()
    down_at = time.monotonic()
    await asyncio.to_thread(server.start)
    back_at = time.monotonic()
    down_s = back_at - down_at
    restarted.set()
    await riders
    found = stored(db_path, [s.name for s in sessions])
    lost = {
        s.name: s.acknowledged - found["per_name"].get(s.name, 0)
        for s in sessions
        if found["per_name"].get(s.name, 0) < s.acknowledged
    }
    unacknowledged_stored = {
        s.name: found["per_name"].get(s.name, 0) - s.acknowledged
        for s in sessions
        if found["per_name"].get(s.name, 0) > s.acknowledged
    }
    return {
        "sessions": n,
        "acknowledged_before_kill": acknowledged_at_kill,
        "server_down_s": down_s,
        "acknowledged": sum(s.acknowledged for s in sessions),
        "stored": sum(found["per_name"].values()),
        "acknowledged_but_missing": lost,
        "stored_unacknowledged (cut off by the kill)": unacknowledged_stored,
        "submits_cut_off": sum(s.cut_off for s in sessions),
        "cut_off_pages_reconnected_by_itself": sum(bool(s.reconnected) for s in sessions),
        # pages whose submit came after the kill: the client sent it once it had reconnected
        "pages_that_carried_on_without_a_reload": sum(s.reconnected is None for s in sessions),
        "ranked_again_after_restart": sum(
            any(t > back_at for t in s.acknowledged_at) for s in sessions
        ),
        "duplicate_annotator_item_rows": found["duplicate_pairs"],
        "sessions_detail": [
            {k: v for k, v in asdict(s).items() if k not in ("waits_s", "acknowledged_at")}
            for s in sessions
        ],
    }


async def run_all(args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    from playwright.async_api import async_playwright

    server = Server(env)
    server.start()
    result: dict = {"per_n": []}
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for n in args.sessions:
                figures = await crowd(
                    browser, server, workdir / "rlhf.db", n, args.window, args.think
                )
                result["per_n"].append(figures)
                print(
                    f"N={n:2d}: {figures['acknowledged']} acknowledged, {figures['stored']} "
                    f"stored, next item p50 {figures['next_item_p50_s'] * 1000:.0f} ms p95 "
                    f"{figures['next_item_p95_s'] * 1000:.0f} ms, server CPU "
                    f"{figures['server_cpu_s_per_session_minute']:.2f} s/session-minute "
                    f"({figures['server_cpu_ms_per_ranking']:.0f} ms/ranking), "
                    f"load {figures['load_average_after'][0]:.1f}",
                    flush=True,
                )
            if args.restart_sessions:
                restart = await restart_scenario(
                    browser, server, workdir / "rlhf.db", args.restart_sessions, args.window
                )
                result["restart"] = restart
                print(
                    "restart:",
                    json.dumps({k: v for k, v in restart.items() if k != "sessions_detail"}),
                )
            await browser.close()
    finally:
        server.stop()
    return result


def plot(per_n: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["sessions"] for r in per_n]
    ax.plot(ns, [r["next_item_p50_s"] for r in per_n], "o-", label="p50")
    ax.plot(ns, [r["next_item_p95_s"] for r in per_n], "s-", label="p95")
    ax.axhline(HOLDS_P95_S, color="grey", linestyle=":", label=f"{HOLDS_P95_S:.0f} s bar")
    ax.set_xlabel("annotator sessions on one server (chromium contexts)")
    ax.set_ylabel("Enter -> next item usable (s)")
    ax.set_title("One Streamlit server, worker training, 2 shared cores")
    ax.legend()
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 10, 15])
    parser.add_argument("--window", type=float, default=45.0, help="seconds each N ranks")
    parser.add_argument("--restart-sessions", type=int, default=10)
    parser.add_argument("--items", type=int, default=6000)
    parser.add_argument("--think", type=float, default=0.0, help="seconds each item is read")
    args = parser.parse_args()
    result: dict = {
        "niceness": os.nice(0),
        "cpus": os.cpu_count(),
        # chromium, the server and the worker share the machine's cores; the load averages
        # say whether anything else did
        "note": "chromium runs on the same cores as the server and the worker",
        "load_average_before": os.getloadavg(),
        "window_s": args.window,
        "think_s": args.think,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        fill(workdir / "rlhf.db", args.items)
        worker, job_id = start_worker(workdir)
        try:
            wait_for_training(worker, workdir, job_id)  # training before the clock starts
            env = os.environ | {
                "RLHF_LOOP_CONFIG": str(workdir / "empty.toml"),
                "RLHF_LOOP_DATA_DIR": str(workdir),
                "RLHF_LOOP_AUTO_START_WORKER": "false",  # the bench's worker is running
            }
            result |= asyncio.run(run_all(args, workdir, env))
            result["worker_alive_throughout"] = worker.poll() is None
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    held = [r["sessions"] for r in result["per_n"] if r["next_item_p95_s"] < HOLDS_P95_S]
    result["holds_sessions_p95_under_1s"] = max(held, default=0)
    result["load_average_after"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"many_browsers_think{args.think:g}" if args.think else "many_browsers"
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(result["per_n"], OUT / f"{name}.png")
    print(f"one server holds {result['holds_sessions_p95_under_1s']} sessions with p95 < 1 s")


if __name__ == "__main__":
    main()
