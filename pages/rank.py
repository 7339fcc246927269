"""Rank page: one prompt, K responses, a rank per response with ties; keyboard first.

Type the ranks in order ("1 2 2 3", or "1223") or an order ("B > A = C > D") and press Enter;
or pick a rank under each response and press Submit. Every user text is drawn with ``st.text``,
never as Markdown or HTML.
"""

import streamlit as st

from pages.common import (
    ask_annotator_name,
    current_annotator,
    database,
    enter_through_app,
    settings,
    show_worker_state,
)
from rlhf_loop.ranking import RankingError, describe_ranking, ranks_from_inputs, response_labels
from rlhf_loop.store.db import StoreError
from rlhf_loop.store.submissions import (
    DuplicateSubmission,
    Status,
    done_today,
    submit,
    undo_last,
)
from rlhf_loop.store.tasks import Task, next_task, tasks_left_for

enter_through_app()

LONG_TEXT_CHARS = 1500  # longer texts scroll inside a box instead of stretching the page
FLAG_REASONS = ["All responses are bad", "Prompt is broken", "Harmful content", "Other"]

config = settings()
db = database()
st.title("Rank")

who = current_annotator()
if who is None:
    ask_annotator_name()
    st.stop()
annotator, name = who


def flash(kind: str, message: str) -> None:
    """A message for the next run, shown once after the page moves on to the next item."""
    st.session_state["flash"] = (kind, message)


def show_flash() -> None:
    kind, message = st.session_state.pop("flash", (None, None))
    if kind == "success":
        st.success(message, icon=":material/check:")
    elif kind == "warning":
        st.warning(message)


def text_box(text: str) -> None:
    with st.container(border=True, height=300 if len(text) > LONG_TEXT_CHARS else "content"):
        st.text(text if text else "(empty response)")


def header() -> None:
    who_col, done_col, left_col = st.columns([2, 1, 1])
    with who_col:
        st.caption("Ranking as")
        st.text(name)
    done_col.metric("Done today", done_today(db, annotator))
    left_col.metric(
        "Queue left", tasks_left_for(db, annotator, config.overlap, config.assignment_timeout_s)
    )


@st.fragment(run_every=1.0)
def wait_for_items() -> None:
    """Shown only while the queue is empty: the worker's progress, until an item is ready."""
    if tasks_left_for(db, annotator, config.overlap, config.assignment_timeout_s):
        st.rerun(scope="app")
    st.info("No items ready yet; the worker is preparing them.")
    show_worker_state()


def on_rank(comparison_id: int, k: int) -> None:
    """Submit callback, bound to the item that was on screen: a stale tab cannot rank another."""
    typed = st.session_state.get(f"typed-{comparison_id}", "")
    picks = [st.session_state.get(f"pick-{comparison_id}-{i}") for i in range(k)]
    try:
        ranks = ranks_from_inputs(typed, picks)
    except RankingError as exc:
        st.session_state["refused"] = (comparison_id, str(exc))
        return
    answer(comparison_id, "ranked", f"Saved {describe_ranking(ranks)}", ranks=ranks)


def answer(comparison_id: int, status: Status, done: str, **details: object) -> None:
    """Store the answer; a refused one says why and keeps the item on screen."""
    try:
        submit(db, annotator, comparison_id, status, **details)
    except DuplicateSubmission as exc:
        flash("warning", str(exc))
    except (RankingError, StoreError) as exc:
        st.session_state["refused"] = (comparison_id, str(exc))
    else:
        flash("success", done)


def on_flag(comparison_id: int) -> None:
    reason = st.session_state.get(f"flag-reason-{comparison_id}") or FLAG_REASONS[-1]
    detail = st.session_state.get(f"flag-detail-{comparison_id}", "").strip()
    answer(comparison_id, "flagged", "Flagged; thank you", reason=f"{reason}. {detail}".strip())


def on_undo() -> None:
    if undo_last(db, annotator) is None:
        flash("warning", "Nothing to undo")


def rank_form(task: Task) -> None:
    cid = task.comparison_id
    labels = response_labels(task.k)
    with st.form(key=f"rank-{cid}", border=False):
        st.text_input(
            "Ranking",
            placeholder=f"ranks in order, e.g. {' '.join(map(str, range(1, task.k + 1)))}"
            ", or B > A = C; Enter submits",
            key=f"typed-{cid}",
        )
        columns = st.columns(2 if task.k <= 4 else 3)
        for i, (label, response) in enumerate(zip(labels, task.responses, strict=True)):
            with columns[i % len(columns)]:
                st.markdown(f"**{label}**")
                text_box(response.text)
                ending = "" if response.finished else " · cut off at the length limit"
                st.caption(f"{response.token_count} tokens{ending}")
                st.segmented_control(
                    f"Rank of {label}",
                    options=list(range(1, task.k + 1)),
                    key=f"pick-{cid}-{i}",
                    label_visibility="collapsed",
                )
        st.form_submit_button(
            "Submit", type="primary", icon=":material/send:", on_click=on_rank, args=(cid, task.k)
        )
    refused_cid, message = st.session_state.pop("refused", (None, None))
    if refused_cid == cid:
        st.error(message, icon=":material/error:")


def actions(task: Task) -> None:
    cid = task.comparison_id
    skip_col, undo_col, flag_col = st.columns(3)
    skip_col.button(
        "Skip",
        icon=":material/skip_next:",
        shortcut="Alt+S",
        on_click=answer,
        args=(cid, "skipped", "Skipped"),
    )
    undo_col.button(
        "Undo last submission", icon=":material/undo:", shortcut="Alt+Z", on_click=on_undo
    )
    with flag_col.popover("Flag…", icon=":material/flag:"), st.form(f"flag-{cid}"):
        st.selectbox("Why", FLAG_REASONS, key=f"flag-reason-{cid}")
        st.text_input("Details (optional)", max_chars=500, key=f"flag-detail-{cid}")
        st.form_submit_button("Flag this item", on_click=on_flag, args=(cid,))


try:
    task = next_task(
        db, annotator, config.overlap, config.assignment_timeout_s, gold_every=config.gold_every
    )
except StoreError as exc:
    st.error(f"{exc}. Reload the page in a moment.")
    st.stop()
header()
show_flash()
if task is None:
    wait_for_items()
    st.stop()

st.subheader("Prompt")
text_box(task.prompt)
rank_form(task)
actions(task)
