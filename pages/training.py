"""Training page (operators): start retrains and PPO rounds, watch them live, compare versions."""

import time
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings, show_worker_state
from rlhf_loop.arena.sequential import BOUNDARY_AT_BUDGET, MIN_RANKINGS
from rlhf_loop.arena.strengths import BETTER, NO_EVIDENCE
from rlhf_loop.human_verdicts import Standing, blind_ranking_count, standings
from rlhf_loop.reports import (
    job_curves,
    jobs_table,
    metric_columns,
    policy_samples,
    policy_versions_table,
    reward_accuracy_points,
    reward_versions_table,
    running_job,
)
from rlhf_loop.reports_export import policy_export_zip
from rlhf_loop.reports_live import (
    StalePage,
    make_live_as_seen,
    page_state,
    policy_choice,
    redraw_needed,
)
from rlhf_loop.reports_verdicts import (
    StaleDecision,
    adoption_events,
    candidate_view,
    decide_candidate,
    overoptimisation_check,
    overoptimisation_points,
    overoptimisation_table,
    scored_by_several_reward_models,
    verdict_fingerprint,
    verdict_rows,
)
from rlhf_loop.store.db import StoreError
from rlhf_loop.store.jobs import enqueue

enter_through_app()

require_operator()
config = settings()
db = database()
st.title("Training")

reward_col, ppo_col, sft_col, note_col = st.columns([1, 1, 1, 2])
if reward_col.button("Train reward model now", type="primary", icon=":material/model_training:"):
    job_id = enqueue(db, "train_reward", {"reason": "operator"})
    st.toast(f"Reward-model training queued as job {job_id}")
if ppo_col.button("Run a PPO round now", icon=":material/rocket_launch:"):
    job_id = enqueue(db, "ppo_round", {"reason": "operator"})
    st.toast(f"PPO round queued as job {job_id}")
if sft_col.button("Run an SFT round now", icon=":material/edit_note:"):
    job_id = enqueue(db, "sft_round", {"reason": "operator"})
    st.toast(f"SFT round queued as job {job_id}")
every = config.reward_retrain_every
schedule = (
    f"The reward model retrains every {every} new rankings"
    if every
    else "Automatic retraining is off"
)
follow = (
    "; a PPO round follows each retrain whose held-out accuracy passes the gate."
    if config.ppo_after_reward
    else "."
)
note_col.caption(schedule + follow)
note_col.caption(
    "An SFT round trains the live policy on people's demonstrations"
    + (
        f", by itself every {config.sft_retrain_every} new ones"
        if config.sft_retrain_every
        else " (only when you ask: sft_retrain_every = 0)"
    )
    + "; its version is published like a PPO round's."
)
if config.policy_adoption == "human":
    note_col.caption(
        "Run a PPO round now skips the reward model's gate, and is safe: under policy_adoption = "
        "human it only makes a candidate, shown in blind items until people (or you) decide; it "
        "replaces a candidate still pending."
    )
else:
    note_col.caption(
        "Run a PPO round now skips the reward model's gate, and under policy_adoption = "
        "immediate its result goes live at once, before anyone has judged it."
    )

# Read before anything below reads the database: a change after this reading, even one that the
# page below already shows, makes the fragment redraw the page (once more than needed, never one
# fewer).
DRAWN = "_training_drawn"
st.session_state[DRAWN] = (page_state(db, config.model), time.monotonic())


def curve_grid(job: dict) -> None:
    """One small chart per logged quantity of a job, three to a row."""
    names = job_curves(db, job["id"], job["kind"])
    curves = metric_columns(db, job["id"], names)
    if not curves["step"]:
        return
    columns = st.columns(3)
    for i, name in enumerate(n for n in names if any(v is not None for v in curves[n])):
        with columns[i % 3]:
            st.caption(name)
            st.line_chart(
                {"step": curves["step"], name: curves[name]}, x="step", y=name, height=180
            )


PROXY, GOLD = "#e45756", "#4c78a8"


def accuracy_chart(points: list[dict[str, Any]]) -> alt.LayerChart:
    """Each reward model's held-out pairwise accuracy with its interval; dashed: chance. Big
    labelled points: with one version the chart is a single point, which at Vega-Lite's default
    size read as an empty chart."""
    base = alt.Chart(pd.DataFrame(points)).encode(
        x=alt.X("version:O", title="reward-model version", axis=alt.Axis(labelAngle=0)),
        tooltip=["version", "accuracy", "low", "high", "pairs"],
    )
    title = "held-out accuracy"
    accuracy_y = alt.Y("accuracy:Q", title=title, scale=alt.Scale(domain=[0, 1]))
    return alt.layer(
        base.mark_rule(color=GOLD, strokeWidth=2).encode(
            y=alt.Y("low:Q", title=title), y2="high:Q"
        ),
        base.mark_point(filled=True, color=GOLD, size=90, opacity=1).encode(y=accuracy_y),
        base.mark_text(align="left", dx=9, color=GOLD).encode(
            y=accuracy_y, text=alt.Text("accuracy:Q", format=".2f")
        ),
        alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(0.5)),
    ).properties(height=220)


def overoptimisation_chart(points: list[dict[str, Any]], x: str) -> alt.LayerChart:
    """Proxy (reward-model score) and gold (blind win rate vs the base, with its interval) on
    independent axes, against KL to the reference or per version."""
    data = pd.DataFrame(points)
    x_axis = (
        alt.X("kl:Q", title="KL to the reference (nats/response)")
        if x == "kl"
        else alt.X("version:O", title="policy version")
    )
    base = alt.Chart(data).encode(
        x=x_axis, tooltip=["version", "reward", "kl", "win", "low", "high", "pairs"]
    )
    gold_title = "human win rate vs base"
    gold_y = alt.Y("win:Q", title=gold_title, scale=alt.Scale(domain=[0, 1]))
    proxy = base.mark_line(point=True, color=PROXY).encode(
        y=alt.Y("reward:Q", title="reward-model score")
    )
    gold = alt.layer(
        base.mark_rule(color=GOLD).encode(y=alt.Y("low:Q", title=gold_title), y2="high:Q"),
        base.mark_point(filled=True, size=60, color=GOLD).encode(y=gold_y),
        alt.Chart().mark_rule(strokeDash=[4, 4], color=GOLD).encode(y=alt.datum(0.5)),
    )
    return alt.layer(proxy, gold).resolve_scale(y="independent").properties(height=260)


@st.fragment(run_every=2.0)
def live() -> None:
    """Worker state and the running job's curves, refreshed every two seconds; the whole page is
    redrawn when what it shows outside this fragment changed (a job ended, a version came)."""
    drawn, drawn_at = st.session_state[DRAWN]
    if redraw_needed(drawn, page_state(db, config.model), time.monotonic() - drawn_at):
        st.rerun(scope="app")
    st.caption("Worker")
    show_worker_state()
    job = running_job(db)
    if job is not None:
        st.subheader(f"Job {job['id']}: {job['kind']}")
        st.progress(min(max(job["progress"] or 0.0, 0.0), 1.0), text=job["message"] or "")
        curve_grid(job)
    st.subheader("Jobs")
    rows = jobs_table(db)
    if rows:
        st.dataframe(
            rows,
            hide_index=True,
            column_config={"progress": st.column_config.ProgressColumn(min_value=0, max_value=1)},
        )
    else:
        st.caption("No jobs yet.")


live()


@st.cache_data(max_entries=8, show_spinner="Reading people's verdict from the blind rankings…")
def cached_standings(
    db_path: str, fingerprint: tuple, base_model: str, budget: int, _db: Any
) -> list[Standing]:
    """The bootstrap behind the standings (~0.1 s per thousand resamples) is refitted only when
    the blind rankings or the versions changed: ``fingerprint`` is the cache key."""
    return standings(_db, base_model, budget)


DECISION = "_adoption_decision"


def decide(action: str, version: int, figures: dict[str, Any]) -> None:
    """Button callback, run with the version and figures of the page the operator clicked on;
    the store checks that this is still the pending candidate before acting."""
    try:
        message = decide_candidate(
            database(), settings().model, version, action, st.session_state["operator"], figures
        )
    except StaleDecision as exc:
        st.session_state[DECISION] = ("error", str(exc))
    except (ValueError, StoreError) as exc:
        st.session_state[DECISION] = ("error", f"Nothing was done: {exc}")
    else:
        st.session_state[DECISION] = ("success", message)


def show_candidate(standing_list: list[Standing]) -> None:
    """The pending candidate, its figures, the comparisons left and the operator's buttons."""
    outcome = st.session_state.pop(DECISION, None)
    if outcome is not None:
        (st.error if outcome[0] == "error" else st.success)(outcome[1])
    view = candidate_view(db, config, standing_list)
    if view is None:
        st.caption("No candidate awaits a verdict.")
        return
    n, s = view.version, view.standing
    with st.container(border=True):
        st.markdown(f"**Candidate v{n}**")
        st.text(
            f"v{n} serves only in blind items against the live version v{view.live_version}, "
            "never on its own; annotators are not told which response is whose.\n"
            f"Now: {view.summary()}."
        )
        if view.undecided:
            st.warning(
                f"People have not decided on v{n} within eval_max_comparisons = "
                f"{config.eval_max_comparisons} blind pairs ({s.parent_pairs} so far, no "
                "evidence either way): the decision is yours. Promote or reject it."
            )
        elif not view.parent_is_live:
            st.warning(
                f"v{n} was made from v{s.parent}, which no longer serves (v{view.live_version} "
                f"does): its verdict is against v{s.parent}, so it is not applied automatically. "
                "Decide it yourself."
            )
        elif s.verdict != NO_EVIDENCE:
            st.info(
                f"People's verdict is {s.verdict!r}; the worker applies it when it next reads "
                "the blind rankings, or decide now."
            )
        else:
            st.info(
                f"The comparison budget allows {view.comparisons_left} more blind pairs against "
                f"v{s.parent} (eval_max_comparisons = {config.eval_max_comparisons}) before the "
                "decision is left to you. You may decide at any time."
            )
        promote_col, reject_col, _ = st.columns([1, 1, 2])
        promote_col.button(
            f"Promote v{n}",
            key=f"promote-{n}",
            on_click=decide,
            args=("promote", n, view.figures),
            type="primary" if s.verdict == BETTER else "secondary",
            icon=":material/check_circle:",
        )
        reject_col.button(
            f"Reject v{n}",
            key=f"reject-{n}",
            on_click=decide,
            args=("reject", n, view.figures),
            icon=":material/cancel:",
        )


def finished_jobs() -> list[dict[str, Any]]:
    """Jobs that ended, newest first: a running one's curves are drawn live in the fragment."""
    return [j for j in jobs_table(db) if j["status"] not in ("queued", "running")]


MAKE_LIVE = "_make_live_outcome"


def make_live(seen: tuple, choice_key: str) -> None:
    """Button callback, run with the versions of the page the operator clicked on: refused when
    they changed meanwhile, so a stale page never rolls back to a version nobody saw."""
    version = st.session_state.get(choice_key)
    try:
        message = make_live_as_seen(database(), version, seen, st.session_state["operator"])
    except (StalePage, ValueError, StoreError) as exc:
        st.session_state[MAKE_LIVE] = ("error", str(exc))
    else:
        st.session_state[MAKE_LIVE] = ("success", message)


def show_make_live() -> None:
    """The version choice, preset to the live version, keyed on the versions it offers so that
    a changed list is a new choice rather than an old pick carried over."""
    seen = policy_choice(db)
    versions = [version for version, _, _ in seen]
    live_version = next((version for version, live, _ in seen if live), None)
    choice_key = "make-live-" + "-".join(f"{v}{'L' if live else ''}{a}" for v, live, a in seen)
    live_col, button_col = st.columns([2, 1], vertical_alignment="bottom")
    live_col.selectbox(
        "Make a version live (roll forward or back)",
        versions,
        index=versions.index(live_version) if live_version in versions else 0,
        format_func=lambda v: f"v{v}" + (" (live)" if v == live_version else ""),
        key=choice_key,
    )
    button_col.button(
        "Make live", icon=":material/undo:", on_click=make_live, args=(seen, choice_key)
    )
    outcome = st.session_state.pop(MAKE_LIVE, None)
    if outcome is not None:
        (st.error if outcome[0] == "error" else st.success)(outcome[1])


st.subheader("People's verdict")
blind_count = blind_ranking_count(db)
if config.policy_adoption == "human":
    adoption_note = (
        "policy_adoption = human: a finished PPO round is a candidate until people prefer it "
        "to the live version (or you decide)."
    )
else:
    adoption_note = (
        "policy_adoption = immediate: a finished PPO round goes live at once; blind items then "
        "compare it with its parent"
        + (", and it is rolled back if people prefer the parent." if config.auto_rollback else ".")
    )
st.caption(
    f"{blind_count} blind rankings so far (items mixing two versions' responses; annotators are "
    f"not told which is whose). eval_share = {config.eval_share:.0%} of new items are blind once "
    "a second version exists. Win rates count a tie as half, with 95% bootstrap intervals over "
    "rankings. The verdict against the parent is a sequential test that may be read after "
    "every ranking and still errs at most 5% of the time: per ranking, the version's net share "
    "of its pairs against the parent; z, their mean over its standard error, must reach "
    f"±{BOUNDARY_AT_BUDGET:.2f}·√(eval_max_comparisons / pairs) until the budget is spent (then "
    f"a bar rising slowly from ±{BOUNDARY_AT_BUDGET:.2f}), and nothing is decided on fewer than "
    f"{MIN_RANKINGS} rankings. " + adoption_note
)
standing_list = cached_standings(
    str(config.resolved_db_path),
    verdict_fingerprint(db, config.model),
    config.model,
    config.eval_max_comparisons,
    db,
)
if standing_list:
    st.dataframe(verdict_rows(standing_list), hide_index=True)
    show_candidate(standing_list)
else:
    st.caption("No policy version yet.")

st.subheader("Reward-model versions")
versions = reward_versions_table(db)
if not versions:
    st.caption("No reward model yet: rank some items, then train.")
else:
    st.caption(
        "Pairwise accuracy on held-out rankings (ties excluded) with its 95% bootstrap interval "
        "and the pairs it rests on; 'too few to mean anything' marks versions whose evidence "
        "cannot tell a useful model from chance. An automatic PPO round follows a retrain only "
        "through the gate: the interval's lower end above 0.5."
    )
    st.dataframe(versions, hide_index=True)
    accuracy_points = [p for p in reward_accuracy_points(db) if p["accuracy"] is not None]
    if accuracy_points:
        st.altair_chart(accuracy_chart(accuracy_points), width="stretch")
    else:
        st.caption("No version has a held-out accuracy yet (no held-out pairs): nothing to plot.")
    last_job = next((j for j in finished_jobs() if j["kind"] == "train_reward"), None)
    if last_job:
        st.caption(f"Loss curve of job {last_job['job']}")
        curve = metric_columns(db, last_job["job"], ["loss"])
        st.line_chart(curve, x="step", y="loss")


st.subheader("Policy versions")
policies = policy_versions_table(db)
if not policies:
    st.caption("No policy yet: the worker registers the base model as version 0 when it starts.")
else:
    budget = (
        f"A round stops when KL to the reference passes ppo_kl_budget = {config.ppo_kl_budget} "
        "and keeps the weights from before that step ('stopped early')."
        if config.ppo_kl_budget
        else "No KL budget (ppo_kl_budget = 0)."
    )
    st.caption(
        "Held-out reward is the reward model's mean score over the held-out prompts counted "
        "beside it, a proxy: only the people's verdict above says a version got better. " + budget
    )
    st.dataframe(policies, hide_index=True)
    last_round = next((j for j in finished_jobs() if j["kind"] == "ppo_round"), None)
    if last_round:
        st.caption(f"Curves of the last PPO round (job {last_round['job']})")
        curve_grid({"id": last_round["job"], "kind": "ppo_round"})
    last_sft = next((j for j in finished_jobs() if j["kind"] == "sft_round"), None)
    if last_sft:
        st.caption(
            f"Loss of the last SFT round (job {last_sft['job']}); its held-out demonstration NLL "
            "before -> after is in the table above"
        )
        curve_grid({"id": last_sft["job"], "kind": "sft_round"})
    show_make_live()

    exportable = [p for p in policies if p["files"] != "(the base model)"]
    if exportable:
        export_col, adapter_col, merged_col = st.columns([2, 1, 1])
        pick = export_col.selectbox("Export version", [p["version"] for p in exportable])
        files = next(p["files"] for p in exportable if p["version"] == pick)
        # Built on click, in a download thread (transformers is imported only then). No rerun
        # on click: a rerun replaces both buttons' files, and a second click before the browser
        # had the new ones downloaded nothing ("Deferred file ... not found").
        adapter_col.download_button(
            "LoRA adapter (zip)",
            data=lambda: policy_export_zip(config, files, merged=False),
            file_name=f"policy-v{pick}-adapter.zip",
            icon=":material/download:",
            on_click="ignore",
        )
        merged_col.download_button(
            "Merged model (zip)",
            data=lambda: policy_export_zip(config, files, merged=True),
            file_name=f"policy-v{pick}-merged.zip",
            icon=":material/download:",
            on_click="ignore",
        )

    samples = policy_samples(db)
    if len(samples) >= 2:
        st.subheader("Side by side")
        left, right = st.columns(2)
        ordered = sorted(samples)
        a = left.selectbox("Version", ordered, index=len(ordered) - 2, key="side_a")
        b = right.selectbox("Version", ordered, index=len(ordered) - 1, key="side_b")
        shared = [p for p in samples[a] if p in samples[b]]
        if shared:  # the prompt first, then the two answers to it, each under its version
            prompt = st.selectbox("Held-out prompt", shared)
            st.text(prompt)
            for column, version in zip(st.columns(2), (a, b), strict=True):
                with column.container(border=True):
                    st.caption(f"v{version}")
                    st.text(samples[version][prompt] or "(empty response)")
        else:
            st.caption(f"v{a} and v{b} were sampled on no common held-out prompt.")


st.subheader("Over-optimisation")
points = overoptimisation_points(db, config.model, standing_list)
if not any(p["reward"] is not None for p in points):
    st.caption("No PPO round yet: nothing to compare.")
else:
    st.caption(
        "PPO climbs the reward model's score (the proxy, red, left axis); only people's blind "
        "win rate against the base (gold, blue with its 95% interval, right axis; dashed: as "
        "good as the base) says whether answers got better. When the proxy rises with KL and the "
        "gold does not, the policy is exploiting the reward model (Gao et al. 2022)."
    )
    kl_col, version_col = st.columns(2)
    with kl_col:
        st.altair_chart(overoptimisation_chart(points, "kl"), width="stretch")
    with version_col:
        st.altair_chart(overoptimisation_chart(points, "version"), width="stretch")
    warning = overoptimisation_check(points)
    if warning:
        st.warning(warning)
    if scored_by_several_reward_models(points):
        st.caption(
            "These versions were scored by different reward models, whose scales may differ: "
            "read a change in score across them with care."
        )
    st.dataframe(overoptimisation_table(points), hide_index=True)

st.subheader("Adoption events")
events = adoption_events(db)
if events:
    st.dataframe(events, hide_index=True)
else:
    st.caption("No promotion, rejection, undecided candidate or gated PPO round yet.")
