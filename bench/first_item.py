"""Time from ``streamlit run app.py`` to the first rankable item, as a new user meets it.

Cold: a fresh data dir and an empty model cache (the default demo model ships built in the
repository, so nothing is built; a non-default ``demo_pretrain_steps`` would be). Warm: a second
launch on a fresh data dir.
The clock starts before Streamlit is launched and stops when the Rank page shows the ranking
field in headless Chromium; screenshots of the start (build progress, if any) and the first item
are saved.

    python bench/first_item.py

Writes bench/out/first_item.json and bench/out/first_item_*.png.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

from bench.app_server import CHROMIUM, CHROMIUM_ARGS, start_app  # noqa: E402
from rlhf_loop.store import leases  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402
from rlhf_loop.worker import LEASE  # noqa: E402


def launch_to_first_item(data_dir: Path, cache_dir: Path, label: str) -> float:
    from playwright.sync_api import sync_playwright

    (data_dir / "empty.toml").write_text("")
    env = os.environ | {
        "RLHF_LOOP_CONFIG": str(data_dir / "empty.toml"),
        "RLHF_LOOP_DATA_DIR": str(data_dir),
        "RLHF_LOOP_MODEL_CACHE_DIR": str(cache_dir),
    }
    started = time.perf_counter()
    server, url = start_app(env)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            for _ in range(600):
                try:
                    page.goto(f"{url}/?annotator=newcomer")
                    break
                except Exception:  # the server is still starting
                    time.sleep(0.1)
            page.get_by_text("Rank", exact=True).first.wait_for(timeout=60_000)
            shot_at = time.perf_counter() + 20
            ranking = page.get_by_label("Ranking")
            while not ranking.count():
                if time.perf_counter() > shot_at:  # a view of the build progress
                    page.screenshot(path=str(OUT / f"first_item_{label}_progress.png"))
                    shot_at = float("inf")
                time.sleep(0.2)
            elapsed = time.perf_counter() - started
            page.screenshot(path=str(OUT / f"first_item_{label}.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
        holder = leases.live_holder(open_db(data_dir / "rlhf.db"), LEASE, 60)
        if holder:
            os.kill(holder["pid"], signal.SIGTERM)
    return elapsed


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "model-cache"
        for name in ("cold", "warm"):
            (root / name).mkdir()
        result = {
            "cold_s": launch_to_first_item(root / "cold", cache, "cold"),
            "warm_s": launch_to_first_item(root / "warm", cache, "warm"),
        }
    (OUT / "first_item.json").write_text(json.dumps(result, indent=2))
    print(
        f"launch -> first rankable item: cold {result['cold_s']:.1f} s (empty model cache), "
        f"warm {result['warm_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
