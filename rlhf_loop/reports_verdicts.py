"""Operator views of people's verdict on policy versions and of over-optimisation: plain rows.

Every figure comes with the evidence under it: a win rate with its 95% interval and the pairs it
rests on, a reward-model score with the held-out prompts it averages. A version never compared
blind reads "no evidence", never 0.5 or 0: a missing measurement is not a tie.

Also the operator's own promote/reject of a candidate, guarded against a stale page: the page
that showed "Promote v3" may have been drawn before people (or another operator) decided v3.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.arena.degeneration import (
    VersionSignal,
    overoptimisation_warning,
    proxy_disagreement,
    round_proxy_gain,
)
from rlhf_loop.arena.sequential import MIN_RANKINGS
from rlhf_loop.config import Settings
from rlhf_loop.human_verdicts import Standing, undecided, verdict_figures
from rlhf_loop.reports import interval_text
from rlhf_loop.store.adoption import pending_candidate, promote, reject
from rlhf_loop.store.db import write_txn
from rlhf_loop.store.training_rankings import RANKED_ITEMS, TRAINS
from rlhf_loop.store.versions import list_versions

NO_EVIDENCE = "no evidence"


def rate_text(rate: float | None, interval: tuple[float, float] | None) -> str:
    """Like "0.62 (0.55–0.69)", or "no evidence" where no blind pairs link the versions."""
    if rate is None:
        return NO_EVIDENCE
    return f"{rate:.2f} ({interval_text(interval)})"


def verdict_fingerprint(db: sqlite_utils.Database, base_model: str) -> tuple:
    """What people's verdict depends on, cheap to read: the blind rankings (count and newest id,
    so an undo and its redo count as a change) and every version's adoption, live flag and
    parent. The page refits the bootstrap only when this changes."""
    blind = db.execute(
        f"SELECT count(*), max(r.id) FROM {RANKED_ITEMS} "
        f"WHERE {TRAINS} AND c.blind_versions IS NOT NULL"
    ).fetchone()
    versions = db.execute(
        "SELECT version, adoption, live, parent_id FROM model_versions "
        "WHERE kind = 'policy' AND base_model = ? ORDER BY version",
        [base_model],
    ).fetchall()
    return tuple(blind), tuple(tuple(v) for v in versions)


def z_text(standing: Standing) -> str:
    """The sequential test's z against the parent and the |z| a verdict needs at this point."""
    direct = standing.against_parent
    if direct is None:
        return "no evidence"
    if direct.rankings < MIN_RANKINGS:
        return f"(needs {MIN_RANKINGS} rankings)"
    return f"{direct.z:+.2f} (±{direct.boundary:.2f})"


def verdict_rows(standings: Sequence[Standing]) -> list[dict[str, Any]]:
    """One table row per policy version, newest first. Text columns where a figure may be
    missing, so that "no evidence" is said in words, not as an empty or zero cell."""
    base = next((s.version for s in standings if s.parent is None), None)
    rows = []
    for s in sorted(standings, key=lambda s: s.version, reverse=True):
        is_base = s.version == base
        rows.append(
            {
                "version": s.version,
                "adoption": s.adoption or ("base" if is_base else ""),
                "live": s.live,
                "parent": "" if s.parent is None else f"v{s.parent}",
                "win rate vs base (95% interval)": (
                    "(the base)" if is_base else rate_text(s.win_vs_base, s.win_vs_base_interval)
                ),
                "pairs (any version)": s.pairs,
                "win rate vs parent (95% interval)": (
                    "(the base)"
                    if s.parent is None
                    else rate_text(s.win_vs_parent, s.win_vs_parent_interval)
                ),
                "pairs vs parent": s.parent_pairs,
                "rankings vs parent": s.parent_rankings,
                "z vs parent (needed now)": z_text(s),
                "verdict vs parent": "(the base)" if s.parent is None else s.verdict,
            }
        )
    return rows


@dataclass(frozen=True)
class CandidateView:
    """The pending candidate as the operator sees it, and the figures a decision records."""

    standing: Standing
    live_version: int | None
    comparisons_left: int  # blind pairs against its parent the budget still allows
    undecided: bool  # people did not decide within the budget: the operator decides

    @property
    def version(self) -> int:
        return self.standing.version

    @property
    def parent_is_live(self) -> bool:
        """Automatic verdicts judge a candidate only against the version serving now; one made
        from a version since rolled away from is left to the operator."""
        return self.standing.parent == self.live_version

    @property
    def figures(self) -> dict[str, Any]:
        """Recorded with a promote/reject: what the operator saw when deciding."""
        return verdict_figures(self.standing) | {"verdict": self.standing.verdict}

    def summary(self) -> str:
        s = self.standing
        return (
            f"win rate against v{s.parent} {rate_text(s.win_vs_parent, s.win_vs_parent_interval)}"
            f" over {s.parent_pairs} blind pairs in {s.parent_rankings} rankings;"
            f" z {z_text(s)}; verdict: {s.verdict}"
        )


def candidate_view(
    db: sqlite_utils.Database, settings: Settings, standings: Sequence[Standing]
) -> CandidateView | None:
    """The candidate pending on ``settings.model``, or None."""
    row = pending_candidate(db, settings.model)
    if row is None:
        return None
    by_version = {s.version: s for s in standings}
    standing = by_version.get(row["version"])
    if standing is None:  # registered after the standings were read: judge it as unseen
        return None
    live = next((s.version for s in standings if s.live), None)
    return CandidateView(
        standing=standing,
        live_version=live,
        comparisons_left=max(0, settings.eval_max_comparisons - standing.parent_pairs),
        undecided=undecided(standing, settings),
    )


class StaleDecision(ValueError):
    """The candidate the page showed is no longer the one pending: nothing was done."""


def decide_candidate(
    db: sqlite_utils.Database,
    base_model: str,
    shown_version: int,
    action: str,
    by: str,
    figures: dict[str, Any],
) -> str:
    """Promote or reject the candidate the operator saw, in one transaction with the check that
    it is still the pending one; returns what was done. Raises ``StaleDecision`` when it is not,
    ``ValueError`` when the store refuses (files gone, say)."""
    if action not in ("promote", "reject"):
        raise ValueError(f"unknown action {action!r}")
    with write_txn(db):
        current = pending_candidate(db, base_model)
        if current is None or current["version"] != shown_version:
            now = "no candidate is pending" if current is None else f"v{current['version']} is"
            raise StaleDecision(
                f"v{shown_version} is no longer the pending candidate ({now} now, as people or "
                "another operator decided meanwhile); nothing was done. Look at the page again."
            )
        if action == "promote":
            promote(db, shown_version, by, figures)
            return f"Policy v{shown_version} promoted: it is live and new items come from it."
        reject(db, shown_version, by, figures)
        return f"Policy v{shown_version} rejected: it no longer appears in blind items."


def overoptimisation_points(
    db: sqlite_utils.Database, base_model: str, standings: Sequence[Standing]
) -> list[dict[str, Any]]:
    """Per policy version (oldest first) the proxy, the gold and the drift: the reward model's
    mean score on held-out prompts, the blind human win rate against the base with its interval,
    KL to the reference, and the cheap degeneration signals. Numbers or None (for charts)."""
    by_version = {s.version: s for s in standings}
    points = []
    for row in sorted(list_versions(db, "policy"), key=lambda v: v["version"]):
        if row["base_model"] != base_model:
            continue
        m, s = row["metrics"], by_version.get(row["version"])
        interval = None if s is None else s.win_vs_base_interval
        points.append(
            {
                "version": row["version"],
                "parent": m.get("parent_version"),
                "reward_version": m.get("reward_version"),
                "heldout_prompts": m.get("eval_prompts"),
                "reward": m.get("reward_after"),
                "proxy_gain": round_proxy_gain(m),
                "parent_low": None
                if s is None or s.win_vs_parent_interval is None
                else s.win_vs_parent_interval[0],
                "parent_high": None
                if s is None or s.win_vs_parent_interval is None
                else s.win_vs_parent_interval[1],
                "kl": m.get("kl_after"),
                "win": None if s is None else s.win_vs_base,
                "low": None if interval is None else interval[0],
                "high": None if interval is None else interval[1],
                "pairs": 0 if s is None else s.pairs,
                "length": m.get("length_after"),
                "length_correlation": m.get("length_correlation_after"),
                "repeated_ngrams": m.get("repeated_ngrams_after"),
                "stopped_early": bool(m.get("stopped_early")),
            }
        )
    return points


def _number(value: float | None, digits: int = 3) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def overoptimisation_table(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points as a table, newest first, each figure beside what it rests on."""
    rows = []
    for p in reversed(points):
        if p["reward"] is None and p["parent"] is None:
            continue  # the base: no round, nothing scored
        interval = None if p["low"] is None else (p["low"], p["high"])
        rows.append(
            {
                "version": p["version"],
                "reward model": "" if p["reward_version"] is None else f"v{p['reward_version']}",
                "reward-model score": _number(p["reward"]),
                "held-out prompts": p["heldout_prompts"],
                "KL to reference": _number(p["kl"]),
                "human win rate vs base (95% interval)": rate_text(p["win"], interval),
                "blind pairs": p["pairs"],
                "mean length (tokens)": _number(p["length"], 1),
                "score~length Spearman": _number(p["length_correlation"], 2),
                "repeated 3-grams": _number(p["repeated_ngrams"], 3),
                "stopped at KL budget": "yes" if p["stopped_early"] else "",
            }
        )
    return rows


def lineage(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest version's line of descent, oldest first: the versions one PPO run climbed
    through, whose scores and win rates should move together."""
    by_version = {p["version"]: p for p in points}
    chain: list[dict[str, Any]] = []
    current = max(by_version, default=None)
    while current is not None and current in by_version and len(chain) <= len(points):
        chain.append(by_version[current])
        current = by_version[current]["parent"]
    return chain[::-1]


def overoptimisation_check(points: Sequence[dict[str, Any]]) -> str | None:
    """The over-optimisation warning over the newest version's lineage (versions with a
    reward-model score; the base has none), else the newest version whose own round's reward
    model and people disagree, or None."""
    warning = _lineage_warning(points)
    for p in reversed(points):
        if warning is not None:
            break
        interval = None if p["parent_high"] is None else (p["parent_low"], p["parent_high"])
        warning = proxy_disagreement(p["version"], p["proxy_gain"], p["parent"], interval)
    return warning


def _lineage_warning(points: Sequence[dict[str, Any]]) -> str | None:
    history = [
        VersionSignal(
            p["version"],
            p["reward"],
            p["win"],
            None if p["low"] is None else (p["low"], p["high"]),
        )
        for p in lineage(points)
        if p["reward"] is not None
    ]
    return overoptimisation_warning(history)


def scored_by_several_reward_models(points: Sequence[dict[str, Any]]) -> bool:
    """Scores of rounds trained against different reward models are on scales that may differ:
    the warning compares them anyway, and the page says so."""
    return len({p["reward_version"] for p in lineage(points) if p["reward"] is not None}) > 1


ADOPTION_EVENTS = {
    "policy_promoted": "promoted",
    "policy_rejected": "rejected",
    "candidate_undecided": "undecided: left to the operator",
    "ppo_gated": "PPO round gated",
}


def _event_figures(payload: dict[str, Any]) -> str:
    if payload.get("win_rate") is None and payload.get("pairs") is None:
        return ""
    interval = payload.get("interval")
    against = payload.get("against")
    return (
        f"{rate_text(payload.get('win_rate'), None if interval is None else tuple(interval))}"
        f" over {payload.get('pairs', 0)} pairs"
        + ("" if against is None else f" against v{against}")
    )


def adoption_events(db: sqlite_utils.Database, limit: int = 20) -> list[dict[str, Any]]:
    """Recent promotions, rejections, undecided candidates and gated PPO rounds, newest first,
    each with the figures it was decided on."""
    kinds = list(ADOPTION_EVENTS)
    rows = db["events"].rows_where(
        f"kind IN ({', '.join('?' * len(kinds))})", kinds, order_by="id DESC", limit=limit
    )
    table = []
    for row in rows:
        payload = json.loads(row["payload"] or "{}")
        gated = row["kind"] == "ppo_gated"
        detail = payload.get("reason", "") if gated else ""
        if payload.get("rolled_back_to") is not None:
            detail = f"rolled back to v{payload['rolled_back_to']}"
        table.append(
            {
                "when": dt.datetime.fromtimestamp(row["at"]).strftime("%m-%d %H:%M:%S"),
                "event": ADOPTION_EVENTS[row["kind"]],
                "version": (
                    f"reward v{payload.get('reward_version')}"
                    if gated
                    else f"policy v{payload.get('version')}"
                ),
                "by": payload.get("by", "people" if row["kind"] == "candidate_undecided" else ""),
                "win rate (95% interval)": _event_figures(payload),
                "detail": detail,
            }
        )
    return table
