"""People's verdict on policy versions, from blind comparison items, and what follows from it.

Rankings of blind items (two versions' responses mixed) are read as an arena: version strengths
by the tie-aware Davidson fit with bootstrap intervals (``rlhf_loop.arena.strengths``), for the
operator to read. Decisions rest on the direct blind pairs against the parent, judged by a
sequential test that stays at 5% error however often it is read (``rlhf_loop.arena.sequential``):
a pending candidate is promoted when people prefer it to the live version, rejected when they
prefer the live one; under immediate adoption a live version people like less than its parent is
rolled back. Each decision is an event with its figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from rlhf_loop.arena.sequential import SequentialEvidence, sequential_evidence
from rlhf_loop.arena.strengths import (
    BETTER,
    NO_EVIDENCE,
    WORSE,
    BootstrapStrengths,
    bootstrap_strengths,
    win_rate,
    win_rate_interval,
)
from rlhf_loop.config import Settings
from rlhf_loop.faults import fault_point
from rlhf_loop.store.adoption import (
    CANDIDATE,
    REJECTED,
    parent_of,
    pending_candidate,
    promote,
    reject,
)
from rlhf_loop.store.events import log_event
from rlhf_loop.store.training_rankings import RANKED_ITEMS, TRAINS
from rlhf_loop.store.versions import list_versions, live_policy

Ranking = list[tuple[int, int]]
BOOTSTRAP_SAMPLES = 1000


def blind_ranking_count(db: sqlite_utils.Database) -> int:
    """Cheap: tells a worker whether there is anything new to judge."""
    return db.execute(
        f"SELECT count(*) FROM {RANKED_ITEMS} WHERE {TRAINS} AND c.blind_versions IS NOT NULL"
    ).fetchone()[0]


def blind_rankings(db: sqlite_utils.Database) -> list[Ranking]:
    """Every ranking that trains, of an item mixing two versions, as (version, rank) pairs."""
    rows = db.execute(
        f"""
        SELECT r.ranks, c.generation_ids FROM {RANKED_ITEMS}
        WHERE {TRAINS} AND c.blind_versions IS NOT NULL ORDER BY r.id
        """
    ).fetchall()
    versions = dict(
        db.execute(
            "SELECT g.id, g.policy_version FROM comparisons c, json_each(c.generation_ids) j "
            "JOIN generations g ON g.id = j.value WHERE c.blind_versions IS NOT NULL"
        ).fetchall()
    )
    return [
        [(versions[g], rank) for g, rank in zip(json.loads(ids), json.loads(ranks), strict=True)]
        for ranks, ids in rows
    ]


@dataclass(frozen=True)
class Standing:
    """One policy version as people judged it: each figure with its interval and evidence."""

    version: int
    adoption: str | None
    live: bool
    parent: int | None
    win_vs_base: float | None
    win_vs_base_interval: tuple[float, float] | None
    win_vs_parent: float | None
    win_vs_parent_interval: tuple[float, float] | None
    pairs: int  # cross-version pairs this version took part in
    against_parent: SequentialEvidence | None  # direct blind pairs against its parent
    verdict: str  # against its parent (a candidate's parent is the version live when it was made)

    @property
    def parent_pairs(self) -> int:
        return 0 if self.against_parent is None else self.against_parent.pairs

    @property
    def parent_rankings(self) -> int:
        return 0 if self.against_parent is None else self.against_parent.rankings


def _win(
    boot: BootstrapStrengths, a: int, b: int | None
) -> tuple[float | None, tuple[float, float] | None]:
    strengths = boot.point.strengths
    if b is None or strengths.get(a) is None or strengths.get(b) is None:
        return None, None
    return win_rate(strengths[a], strengths[b], boot.point.log_nu), win_rate_interval(boot, a, b)


def standings(
    db: sqlite_utils.Database, base_model: str, budget: int, seed: int = 0
) -> list[Standing]:
    """Every policy version of ``base_model`` with its blind win rates against the base and its
    parent; versions never compared blind carry None figures (no evidence, not 0.5). ``budget``
    is ``eval_max_comparisons``: the blind pairs by which a verdict is due (see
    ``rlhf_loop.arena.sequential``)."""
    rankings = blind_rankings(db)
    versions = list_versions(db, "policy")
    versions = [v for v in versions if v["base_model"] == base_model]
    base = next((v["version"] for v in versions if v["path"] is None), None)
    boot = bootstrap_strengths(rankings, base, BOOTSTRAP_SAMPLES, seed) if rankings else None
    by_id = {v["id"]: v for v in versions}
    result = []
    for row in sorted(versions, key=lambda v: v["version"]):
        parent = by_id.get(row["parent_id"], {}).get("version")
        pairs = 0 if boot is None else boot.evidence.get(row["version"], (0, 0))[0]
        vs_base = vs_parent = (None, None)
        direct = None
        if boot is not None and row["version"] in boot.versions:
            vs_base = _win(boot, row["version"], base if base != row["version"] else None)
            if parent is not None and parent in boot.versions:
                vs_parent = _win(boot, row["version"], parent)
                direct = sequential_evidence(rankings, row["version"], parent, budget)
        result.append(
            Standing(
                version=row["version"],
                adoption=row["adoption"],
                live=bool(row["live"]),
                parent=parent,
                win_vs_base=vs_base[0],
                win_vs_base_interval=vs_base[1],
                win_vs_parent=vs_parent[0],
                win_vs_parent_interval=vs_parent[1],
                pairs=pairs,
                against_parent=direct,
                verdict=NO_EVIDENCE if direct is None else direct.verdict,
            )
        )
    return result


def verdict_figures(standing: Standing) -> dict[str, Any]:
    """What a decision about ``standing`` is recorded with: the evidence against its parent."""
    interval = standing.win_vs_parent_interval
    direct = standing.against_parent
    return {
        "win_rate": standing.win_vs_parent,
        "interval": None if interval is None else list(interval),
        "pairs": standing.parent_pairs,
        "rankings": standing.parent_rankings,
        "against": standing.parent,
        # the sequential test the automatic decision rests on (inf is not JSON: a string)
        "z": None if direct is None else _finite(direct.z),
        "z_needed": None if direct is None else _finite(direct.boundary),
    }


def _finite(value: float) -> float | str:
    return round(value, 3) if math.isfinite(value) else str(value)


def decide(db: sqlite_utils.Database, settings: Settings) -> list[str]:
    """Apply what people's rankings now say; returns one line per decision taken."""
    live = live_policy(db, settings.model)
    candidate = pending_candidate(db, settings.model)
    if candidate is None and not (
        settings.policy_adoption == "immediate" and settings.auto_rollback
    ):
        return []
    if candidate is None and parent_of(db, live) is None:
        return []
    by_version = {
        s.version: s for s in standings(db, settings.model, settings.eval_max_comparisons)
    }
    if candidate is not None:
        return _judge_candidate(db, settings, by_version[candidate["version"]], live)
    return _judge_live(db, by_version[live["version"]])


def _judge_candidate(
    db: sqlite_utils.Database, settings: Settings, standing: Standing, live: dict[str, Any]
) -> list[str]:
    figures = verdict_figures(standing)
    if standing.parent != live["version"]:
        # made from a version that is no longer live (an operator rolled back meanwhile): its
        # comparisons are against its parent, which does not say it beats what serves now
        return []
    if standing.verdict in (BETTER, WORSE):
        fault_point("before_verdict")  # a worker killed with the verdict reached, not yet applied
    if standing.verdict == BETTER:
        promote(db, standing.version, "people", figures)
        return [f"v{standing.version} promoted: people prefer it to v{live['version']}"]
    if standing.verdict == WORSE:
        reject(db, standing.version, "people", figures)
        return [f"v{standing.version} rejected: people prefer v{live['version']}"]
    if standing.parent_pairs >= settings.eval_max_comparisons:
        _note_undecided(db, standing, figures)
    return []


def _judge_live(db: sqlite_utils.Database, standing: Standing) -> list[str]:
    if standing.verdict != WORSE or standing.adoption == REJECTED:
        return []
    reject(db, standing.version, "people (auto rollback)", verdict_figures(standing))
    return [f"v{standing.version} rolled back to v{standing.parent}: people prefer the parent"]


def _note_undecided(db: sqlite_utils.Database, standing: Standing, figures: dict) -> None:
    """Once per candidate: people have not decided within the comparison budget."""
    already = db["events"].count_where(
        "kind = 'candidate_undecided' AND json_extract(payload, '$.version') = ?",
        [standing.version],
    )
    if not already:
        log_event(db, "candidate_undecided", version=standing.version, **figures)


def undecided(standing: Standing, settings: Settings) -> bool:
    """A candidate whose verdict is now the operator's: no evidence within the budget."""
    return (
        standing.adoption == CANDIDATE
        and standing.verdict == NO_EVIDENCE
        and standing.parent_pairs >= settings.eval_max_comparisons
    )
