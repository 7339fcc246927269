"""Training page (operators): start a reward-model retrain, watch it live, compare versions."""

import streamlit as st

from pages.common import database, settings, show_worker_state
from rlhf_loop.reports import jobs_table, metric_columns, reward_versions_table, running_job
from rlhf_loop.store.jobs import enqueue

config = settings()
db = database()
st.title("Training")

left, right = st.columns([1, 2])
if left.button("Train reward model now", type="primary", icon=":material/model_training:"):
    job_id = enqueue(db, "train_reward", {"reason": "operator"})
    st.toast(f"Reward-model training queued as job {job_id}")
every = config.reward_retrain_every
right.caption(
    f"Retrains automatically every {every} new rankings."
    if every
    else "Automatic retraining is off."
)


@st.fragment(run_every=2.0)
def live() -> None:
    """Worker state and the running job's curves, refreshed every two seconds."""
    st.caption("Worker")
    show_worker_state()
    job = running_job(db)
    if job is not None:
        st.subheader(f"Job {job['id']}: {job['kind']}")
        st.progress(min(max(job["progress"] or 0.0, 0.0), 1.0), text=job["message"] or "")
        curves = metric_columns(db, job["id"], ["loss", "nu"])
        if curves["step"]:
            loss_col, nu_col = st.columns(2)
            loss_col.line_chart({k: curves[k] for k in ("step", "loss")}, x="step", y="loss")
            nu_col.line_chart({k: curves[k] for k in ("step", "nu")}, x="step", y="nu")
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

st.subheader("Reward-model versions")
versions = reward_versions_table(db)
if not versions:
    st.caption("No reward model yet: rank some items, then train.")
else:
    st.dataframe(versions, hide_index=True)
    chronological = versions[::-1]
    st.line_chart(
        {
            "version": [v["version"] for v in chronological],
            "pairwise accuracy": [v["pairwise accuracy"] for v in chronological],
            "3-way accuracy": [v["3-way accuracy"] for v in chronological],
        },
        x="version",
        y=["pairwise accuracy", "3-way accuracy"],
    )
    last_job = next((j for j in jobs_table(db) if j["kind"] == "train_reward"), None)
    if last_job:
        st.caption(f"Loss curve of job {last_job['job']}")
        curve = metric_columns(db, last_job["job"], ["loss"])
        st.line_chart(curve, x="step", y="loss")
