"""Training page (operators): start retrains and PPO rounds, watch them live, compare versions."""

import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings, show_worker_state
from rlhf_loop.reports import (
    PPO_CURVES,
    jobs_table,
    metric_columns,
    policy_samples,
    policy_versions_table,
    reward_versions_table,
    running_job,
)
from rlhf_loop.store.jobs import enqueue
from rlhf_loop.store.versions import set_live_policy

enter_through_app()

require_operator()
config = settings()
db = database()
st.title("Training")

reward_col, ppo_col, note_col = st.columns([1, 1, 2])
if reward_col.button("Train reward model now", type="primary", icon=":material/model_training:"):
    job_id = enqueue(db, "train_reward", {"reason": "operator"})
    st.toast(f"Reward-model training queued as job {job_id}")
if ppo_col.button("Run a PPO round now", icon=":material/rocket_launch:"):
    job_id = enqueue(db, "ppo_round", {"reason": "operator"})
    st.toast(f"PPO round queued as job {job_id}")
every = config.reward_retrain_every
schedule = (
    f"The reward model retrains every {every} new rankings"
    if every
    else "Automatic retraining is off"
)
follow = "; a PPO round follows each retrain." if config.ppo_after_reward else "."
note_col.caption(schedule + follow)


def export_zip(version_dir: str, merged: bool) -> bytes:
    """Runs on click, in Streamlit's download thread; torch is imported only then."""
    from rlhf_loop.model.loader import resolve_model_path
    from rlhf_loop.ppo.export import adapter_zip, merged_zip

    if merged:
        return merged_zip(resolve_model_path(config), version_dir)
    return adapter_zip(version_dir)


def curve_grid(job: dict) -> None:
    """One small chart per logged quantity of a job, three to a row."""
    names = PPO_CURVES if job["kind"] == "ppo_round" else ["loss", "nu"]
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


@st.fragment(run_every=2.0)
def live() -> None:
    """Worker state and the running job's curves, refreshed every two seconds."""
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


st.subheader("Policy versions")
policies = policy_versions_table(db)
if not policies:
    st.caption("No policy yet: the worker registers the base model as version 0 when it starts.")
else:
    st.dataframe(policies, hide_index=True)
    last_round = next((j for j in jobs_table(db) if j["kind"] == "ppo_round"), None)
    if last_round:
        st.caption(f"Curves of the last PPO round (job {last_round['job']})")
        curve_grid({"id": last_round["job"], "kind": "ppo_round"})
    versions = [p["version"] for p in policies]
    live_col, button_col = st.columns([2, 1])
    chosen = live_col.selectbox("Make a version live (roll forward or back)", versions)
    if button_col.button("Make live", icon=":material/undo:"):
        try:
            set_live_policy(db, chosen)
        except ValueError as exc:
            st.error(str(exc))
        else:
            st.success(f"Policy v{chosen} is live; new items will be sampled from it.")
            st.rerun()

    exportable = [p for p in policies if p["files"] != "(the base model)"]
    if exportable:
        export_col, adapter_col, merged_col = st.columns([2, 1, 1])
        pick = export_col.selectbox("Export version", [p["version"] for p in exportable])
        files = next(p["files"] for p in exportable if p["version"] == pick)
        adapter_col.download_button(
            "LoRA adapter (zip)",
            data=lambda: export_zip(files, merged=False),
            file_name=f"policy-v{pick}-adapter.zip",
            icon=":material/download:",
        )
        merged_col.download_button(
            "Merged model (zip)",
            data=lambda: export_zip(files, merged=True),
            file_name=f"policy-v{pick}-merged.zip",
            icon=":material/download:",
        )

    samples = policy_samples(db)
    if len(samples) >= 2:
        st.subheader("Side by side")
        left, right = st.columns(2)
        ordered = sorted(samples)
        a = left.selectbox("Version", ordered, index=len(ordered) - 2, key="side_a")
        b = right.selectbox("Version", ordered, index=len(ordered) - 1, key="side_b")
        shared = [p for p in samples[a] if p in samples[b]]
        if shared:
            prompt = st.selectbox("Held-out prompt", shared)
            st.text(prompt)
            for column, version in ((left, a), (right, b)):
                with column.container(border=True):
                    st.caption(f"v{version}")
                    st.text(samples[version][prompt] or "(empty response)")
