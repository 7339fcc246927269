"""Keeping the Training page true to the database while jobs run and end.

The page is drawn once per run; only its live fragment (worker, running job, jobs table) reruns
by itself. Without more, a page left open while a retrain and a PPO round finish goes on saying
"No reward model yet", lists only policy v0 and offers "Make live" on v0: one click rolls back a
version the operator never saw. So:

- ``page_state`` is a cheap reading of everything the rest of the page depends on; the fragment
  compares it with the reading taken when the page was drawn and redraws the whole page when it
  differs (``redraw_needed``). People's verdict moves with every blind ranking, so a change there
  alone redraws at most every ``VERDICT_REFRESH_S`` seconds.
- ``make_live_as_seen`` re-reads the policy versions at click time, in the transaction that
  switches, and refuses when they are not the ones the page showed.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from rlhf_loop.reports_verdicts import ADOPTION_EVENTS, verdict_fingerprint
from rlhf_loop.store.db import write_txn
from rlhf_loop.store.versions import set_live_policy

# A change in blind rankings only (no job, version or decision) redraws at most this often: the
# bootstrap behind people's verdict is refitted on every redraw that follows one.
VERDICT_REFRESH_S = 30.0

# Jobs whose status the page reads outside its fragment (the newest, as the jobs table shows).
JOBS_WATCHED = 20

PolicyChoice = tuple[tuple[int, bool, str], ...]


@dataclass(frozen=True)
class PageState:
    """What the Training page outside its fragment shows, as comparable tuples."""

    structure: tuple  # jobs' statuses, every model version, the newest adoption event
    verdict: tuple  # the blind rankings and versions people's verdict is fitted on


def page_state(db: sqlite_utils.Database, base_model: str) -> PageState:
    """A few indexed reads (well under a millisecond on a busy database): run every 2 s."""
    jobs = db.execute(
        "SELECT id, status FROM jobs ORDER BY id DESC LIMIT ?", [JOBS_WATCHED]
    ).fetchall()
    versions = db.execute(
        "SELECT id, kind, version, live, adoption, path FROM model_versions ORDER BY id"
    ).fetchall()
    kinds = list(ADOPTION_EVENTS)
    newest_event = db.execute(
        f"SELECT max(id) FROM events WHERE kind IN ({', '.join('?' * len(kinds))})", kinds
    ).fetchone()[0]
    structure = (tuple(map(tuple, jobs)), tuple(map(tuple, versions)), newest_event)
    return PageState(structure, verdict_fingerprint(db, base_model))


def redraw_needed(drawn: PageState, now: PageState, seconds_since_drawn: float) -> bool:
    """Whether the page drawn from ``drawn`` no longer shows the database: at once when a job
    changed status, a version or decision appeared; for blind rankings alone, once the page is
    ``VERDICT_REFRESH_S`` old."""
    if now.structure != drawn.structure:
        return True
    return now.verdict != drawn.verdict and seconds_since_drawn >= VERDICT_REFRESH_S


def policy_choice(db: sqlite_utils.Database) -> PolicyChoice:
    """The policy versions the "Make live" choice is drawn from: (version, live, adoption)."""
    rows = db.execute(
        "SELECT version, live, coalesce(adoption, '') FROM model_versions "
        "WHERE kind = 'policy' ORDER BY version DESC"
    ).fetchall()
    return tuple((version, bool(live), adoption) for version, live, adoption in rows)


class StalePage(ValueError):
    """The policy versions changed since the page was drawn: nothing was done."""


def _changes(seen: PolicyChoice, now: PolicyChoice) -> str:
    """What changed, in the words an operator needs to choose again."""
    seen_versions = {v for v, _, _ in seen}
    parts = [f"v{v} was added" for v, _, _ in sorted(now) if v not in seen_versions]
    live_then = next((v for v, live, _ in seen if live), None)
    live_now = next((v for v, live, _ in now if live), None)
    if live_now != live_then:
        parts.append(f"v{live_now} is live now, not v{live_then}")
    seen_adoption = {v: a for v, _, a in seen}
    parts += [
        f"v{v} is {a or 'no longer ' + seen_adoption[v]} now"
        for v, _, a in sorted(now)
        if v in seen_adoption and seen_adoption[v] != a
    ]
    return "; ".join(parts) or "the versions were changed"


def make_live_as_seen(db: sqlite_utils.Database, version: int, seen: PolicyChoice, by: str) -> str:
    """Make ``version`` live if the policy versions are still those the operator chose among;
    returns what was done. Raises ``StalePage`` when they changed (a round finished, people or
    another operator decided) and ``ValueError`` when the store refuses (files gone, say)."""
    with write_txn(db):
        now = policy_choice(db)
        if now != seen:
            raise StalePage(
                f"The policy versions changed since this page was drawn ({_changes(seen, now)}); "
                f"nothing was done. The list now shows them: choose again."
            )
        if next((live for v, live, _ in now if v == version), False):
            return f"Policy v{version} was already live; nothing changed."
        set_live_policy(db, version, by=by)
    return f"Policy v{version} is live; new items will be sampled from it."
