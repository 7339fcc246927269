"""Dashboard page (operators): annotation quality: agreement, gold checks, time, flags.

The figures inform; nothing here bans or down-weights an annotator automatically. They are
people's: simulated annotators are counted apart, below the people's table.
"""

import altair as alt
import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings
from rlhf_loop.ranking import response_labels
from rlhf_loop.store.agreement_cache import training_agreement
from rlhf_loop.store.annotator_table import TABLE_COLUMNS, annotator_table
from rlhf_loop.store.flags import ReviewError, flag_counts, open_flags, review_flag
from rlhf_loop.store.quality import overall
from rlhf_loop.store.simulated import ranking_counts, simulated_annotators

enter_through_app()

require_operator()
config = settings()
db = database()
st.title("Dashboard")

summary = overall(db)
flags = flag_counts(db)
table = annotator_table(db)
report = table.rows
cols = st.columns(4)
alpha = summary["alpha"]
cols[0].metric("Krippendorff's α (ordinal)", "—" if alpha is None else f"{alpha:.2f}")
cols[1].metric("Items ranked by 2+ annotators", summary["items_shared"])
cols[2].metric(
    "Annotators",
    len(report),
    help="Annotators with at least one answer (ranked, skipped or flagged): the table's rows.",
)
cols[3].metric("Open flags", flags["open"])
if config.overlap < 2:
    st.info(
        "Each item goes to one annotator (overlap = 1), so agreement between annotators is "
        "only measured on gold items. Set overlap to 2 or more to measure it on every item."
    )

st.subheader("Annotators")
st.caption(
    "τ: Kendall's tau-b with ties against the other annotators' consensus on the same items "
    "(1 = same order, 0 = unrelated, −1 = reversed). Gold: the same against items with a known "
    f"order, one in every {config.gold_every or '—'} items. Shown to inform, never used to "
    "exclude anyone automatically."
)
cutoff_min = table.cutoff_s / 60
st.caption(
    "Time per item: seconds from serving an item to its submit, median and 90th percentile, over "
    f"rankings that took at most {cutoff_min:g} min. Longer ones (a tab left open, a break) are "
    "idle time, not work: they are left out of the time figures and counted under 'idle, left "
    f"out' ({table.idle_excluded} so far)."
)
st.dataframe(
    report,
    hide_index=True,
    width="stretch",
    column_order=TABLE_COLUMNS,
    column_config={
        "median_s": st.column_config.NumberColumn("median s/item", format="%.1f"),
        "p90_s": st.column_config.NumberColumn("p90 s/item", format="%.1f"),
        "idle_excluded": st.column_config.NumberColumn(
            f"idle, left out (> {cutoff_min:g} min)",
            help="Rankings that took longer than the cutoff: not in the median or p90.",
        ),
        "agreement_tau": st.column_config.ProgressColumn(
            "τ vs others", min_value=-1.0, max_value=1.0, format="%.2f"
        ),
        "agreement_items": "shared items",
        "agreement_scored": None,
        "gold_items": "gold items",
        "gold_tau": st.column_config.ProgressColumn(
            "τ vs gold", min_value=-1.0, max_value=1.0, format="%.2f"
        ),
        "gold_pair_accuracy": st.column_config.ProgressColumn(
            "gold pairs right", min_value=0.0, max_value=1.0, format="%.2f"
        ),
    },
)
if table.without_answers:
    st.caption("Signed up, no answer yet (not in the table):")
    st.text(", ".join(table.without_answers))

pairs = training_agreement(db).pairwise.rows()
time_col, pair_col = st.columns(2)
with time_col:
    st.caption("Seconds per item (median)")
    timed = [r for r in report if r["median_s"] is not None]
    if timed:
        st.bar_chart(timed, x="annotator", y="median_s", height=260)
    else:
        st.text("No rankings yet.")
with pair_col:
    st.caption("τ between every two annotators (items both ranked)")
    if pairs:
        heat = (
            alt.Chart(alt.Data(values=pairs))
            .mark_rect()
            .encode(
                x=alt.X("annotator:N", title=None),
                y=alt.Y("other:N", title=None),
                color=alt.Color("tau:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue")),
                tooltip=["annotator:N", "other:N", "tau:Q", "items:Q"],
            )
            .properties(height=260)
        )
        st.altair_chart(heat, width="stretch")
    else:
        st.text("No item has been ranked by two annotators yet.")

counts = ranking_counts(db)
simulated = simulated_annotators(db)
if simulated:
    st.subheader("Simulated annotators")
    use = (
        "they train the reward model and count in the verdict on versions (opted in)"
        if counts.simulated_included
        else "they neither train nor count in the verdict on versions"
    )
    st.caption(
        f"Live rankings: {counts.human} by people, {counts.simulated} by simulated annotators. "
        f"Simulated ones are in no figure above; {use}. Start, stop, opt in or remove them on "
        "the Simulated annotators page."
    )
    st.dataframe(simulated, hide_index=True, width="stretch")


def on_review(ranking_id: int, decision: str) -> None:
    note = st.session_state.get(f"note-{ranking_id}", "")
    try:
        review_flag(db, ranking_id, decision, st.session_state["operator"], note)
    except ReviewError as exc:
        st.session_state["review_error"] = str(exc)


st.subheader(f"Flags to review ({flags['open']})")
problem = st.session_state.pop("review_error", None)
if problem:
    st.error(problem)
for flag in open_flags(db, limit=20):
    rid = flag["ranking_id"]
    with st.expander(f"Flag #{rid}"):  # labels are Markdown: user text goes in st.text only
        st.caption("Flagged by")
        st.text(flag["annotator"])
        st.caption("Reason")
        st.text(flag["reason"])
        st.caption("Prompt")
        st.text(flag["prompt"])
        for label, text in zip(
            response_labels(len(flag["responses"])), flag["responses"], strict=True
        ):
            st.caption(f"Response {label}")
            st.text(text or "(empty response)")
        st.text_input("Note (optional)", key=f"note-{rid}", max_chars=500)
        keep_col, retire_col = st.columns(2)
        keep_col.button(
            "Dismiss: the item is fine",
            key=f"dismiss-{rid}",
            on_click=on_review,
            args=(rid, "dismissed"),
        )
        retire_col.button(
            "Retire the prompt",
            key=f"retire-{rid}",
            on_click=on_review,
            args=(rid, "retired_prompt"),
            type="primary",
            help="No longer sampled, served or used for training; its rows stay in the database.",
        )
if not flags["open"]:
    st.text("Nothing flagged is waiting.")
