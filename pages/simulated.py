"""Simulated annotators page (operators): start simulated annotators with a built-in preference,
watch and stop them, choose whether their rankings train and judge versions, remove them."""

import datetime as dt

import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings
from rlhf_loop.simulate import BUILT_IN_ORACLES
from rlhf_loop.simulate_launch import LOG_FILE, start_simulation
from rlhf_loop.store.db import StoreError
from rlhf_loop.store.simulated import (
    SimulationRunning,
    ranked_per_run,
    ranking_counts,
    remove_simulated,
    set_simulated_included,
    simulated_annotators,
    simulated_included,
)
from rlhf_loop.store.simulation_runs import (
    MAX_ANNOTATORS,
    MAX_NOISE,
    MIN_PACE_S,
    PlanError,
    SimulationPlan,
    live_runs,
    recent_runs,
    request_stop,
    shown_state,
)

enter_through_app()

require_operator()
config = settings()
db = database()
st.title("Simulated annotators")
st.caption(
    "Simulated annotators rank the queued items through the same calls as people, with a hidden "
    "preference seen through noise. Their rankings are marked simulated: never in the "
    "Dashboard's agreement figures, and in training and version comparisons only if you say so "
    "below. They need no model, only items the worker has queued; with none queued they wait."
)
ORACLE_LABELS = {
    "arithmetic": "Correct arithmetic: the right result of 'What is a + b?'",
    "length": "Length: answers of about 5 words",
    "keyword": "Keyword: answers that say 'thank'",
}
MESSAGE = "_simulated_message"


def say(kind: str, text: str) -> None:
    st.session_state[MESSAGE] = (kind, text)


def on_start() -> None:
    state = st.session_state
    plan = SimulationPlan(
        oracle=state["sim-oracle"],
        annotators=int(state["sim-annotators"]),
        noise=float(state["sim-noise"]),
        tie_threshold=float(state["sim-ties"]),
        pace_s=float(state["sim-pace"]),
        seed=int(state["sim-seed"]),
    )
    try:
        started = start_simulation(db, config, plan, state["operator"])
    except (PlanError, StoreError, OSError) as exc:
        say("error", f"Not started: {exc}")
    else:
        say("success", f"Run {started.run} started with {plan.annotators} annotator(s).")


def on_stop(run: int) -> None:
    if request_stop(db, run, st.session_state["operator"]):
        say("info", f"Run {run} stops after its current ranking.")
    else:
        say("info", f"Run {run} had already ended.")


def on_include(key: str) -> None:
    set_simulated_included(db, bool(st.session_state[key]), st.session_state["operator"])


def on_remove() -> None:
    if not st.session_state.get("sim-remove-sure"):
        say("error", "Tick the box to confirm: every simulated answer is taken out.")
        return
    try:
        removed = remove_simulated(db, st.session_state["operator"], config.lease_timeout_s)
    except (SimulationRunning, StoreError) as exc:
        say("error", f"Nothing was removed: {exc}")
    else:
        say("success", f"{removed} simulated answer(s) removed.")


outcome = st.session_state.pop(MESSAGE, None)
if outcome is not None:
    {"success": st.success, "info": st.info, "error": st.error}[outcome[0]](outcome[1])

st.subheader("Start")
with st.form("simulate"):
    st.selectbox(
        "Preference", sorted(BUILT_IN_ORACLES), format_func=ORACLE_LABELS.get, key="sim-oracle"
    )
    count_col, pace_col, noise_col, ties_col, seed_col = st.columns(5)
    count_col.number_input("Annotators", 1, MAX_ANNOTATORS, 3, key="sim-annotators")
    pace_col.number_input(
        "Seconds per ranking",
        MIN_PACE_S,
        3600.0,
        5.0,
        step=1.0,
        key="sim-pace",
        help="Each annotator ranks one item this often (staggered among them).",
    )
    noise_col.number_input(
        "Noise",
        0.0,
        MAX_NOISE,
        0.3,
        step=0.1,
        key="sim-noise",
        help="Standard deviation of the Gaussian noise on each response's hidden score.",
    )
    ties_col.number_input(
        "Tie threshold",
        0.0,
        MAX_NOISE,
        0.5,
        step=0.1,
        key="sim-ties",
        help="Responses whose noisy scores are this close are ranked as a tie: the higher, "
        "the more ties.",
    )
    seed_col.number_input("Seed", 0, 2**31 - 1, 0, key="sim-seed")
    st.form_submit_button("Start simulated annotators", type="primary", on_click=on_start)


running = [r["id"] for r in live_runs(db, config.lease_timeout_s)]


@st.fragment(run_every=2.0)
def runs() -> None:
    """The runs with their state and rankings, refreshed every two seconds; the whole page once
    a run started or ended (the removal below is allowed only when none runs)."""
    live = live_runs(db, config.lease_timeout_s)
    if [r["id"] for r in live] != running:
        st.rerun(scope="app")
    st.subheader("Runs")
    rows = recent_runs(db)
    if not rows:
        st.text("No simulation has run yet.")
        return
    ranked = ranked_per_run(db)
    st.dataframe(
        [
            {
                "run": r["id"],
                "preference": r["oracle"],
                "annotators": r["annotators"],
                "s/ranking": r["pace_s"],
                "noise": r["noise"],
                "tie threshold": r["tie_threshold"],
                "state": shown_state(r, config.lease_timeout_s),
                "rankings": ranked.get(r["id"], 0),
                "status": r["message"] or "",
                "started by": r["started_by"],
                "started": dt.datetime.fromtimestamp(r["created_at"]).strftime("%Y-%m-%d %H:%M"),
            }
            for r in rows
        ],
        hide_index=True,
        width="stretch",
    )
    counts = ranking_counts(db)
    st.caption(
        f"'rankings' counts live ones (not removed): {counts.simulated} simulated in all, "
        f"{counts.human} by people. A run stops after its current ranking; 'lost' means its "
        f"process ended without saying so (see {LOG_FILE} in the data folder)."
    )
    for r in live:
        st.button(
            f"Stop run {r['id']}", key=f"sim-stop-{r['id']}", on_click=on_stop, args=(r["id"],)
        )
    with st.expander("Simulated annotators"):
        st.dataframe(simulated_annotators(db), hide_index=True, width="stretch")


runs()

included = simulated_included(db)
st.subheader("Use in training and version comparisons")
key = f"sim-included-{included}"  # a fresh widget after anyone's change
st.toggle(
    "Simulated rankings train the reward model and count in people's verdict on versions",
    value=included,
    key=key,
    on_change=on_include,
    args=(key,),
)
st.caption(
    "Off, training, exports, the retrain trigger and the verdict on candidate versions use "
    "people's rankings only. Agreement figures never include simulated annotators."
)

st.subheader("Remove simulated rankings")
st.caption(
    "Takes every simulated answer out of training, exports and verdicts at once, and returns "
    "their items to the queue for people. The rows stay in the database, marked undone, and the "
    "removal is logged; it cannot be undone from the app. Stop every run first."
)
with st.form("sim-remove", clear_on_submit=True):
    st.checkbox("Remove all simulated answers", key="sim-remove-sure")
    st.form_submit_button(
        "Remove simulated rankings",
        on_click=on_remove,
        disabled=bool(running),
        help="Stop the running simulations first." if running else None,
    )
