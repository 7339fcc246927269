"""Rank page: one prompt, K responses, a rank per response with ties; keyboard first.

Type the ranks in order ("1 2 2 3", or "1223") or an order ("B > A = C > D") and press Enter;
or pick a rank under each response and press Submit. The ranking box has the focus whenever an
item is shown, so ranking needs no mouse. Every user text is drawn with ``st.text``, never as
Markdown or HTML; the operators' guidelines are Markdown without HTML.

"Write a better answer" (Alt+W) opens an editor, prefilled with a response the annotator picks or
empty; the written answer answers the item (``store.demonstrations``) and, as the page says, counts
as a ranking above all K unless the operator turned that off.
"""

import datetime as dt

import streamlit as st

from pages.common import (
    ask_annotator_name,
    current_annotator,
    database,
    enter_through_app,
    settings,
    settle_heap,
    show_worker_state,
)
from rlhf_loop.ranking import (
    RankingError,
    describe_ranking,
    parse_ranking,
    ranks_from_inputs,
    response_labels,
)
from rlhf_loop.store.db import StoreError
from rlhf_loop.store.demonstrations import demonstration_of, submit_demonstration
from rlhf_loop.store.guidelines import current_guidelines
from rlhf_loop.store.submissions import (
    MAX_COMMENT_CHARS,
    STREAK_BREAK_S,
    DuplicateSubmission,
    ItemReplaced,
    Reopened,
    RestoredSince,
    Status,
    progress,
    recent_answers,
    reopen,
    reopen_last,
    restore_mark,
    submit,
)
from rlhf_loop.store.tasks import Task, next_task, tasks_left_for

enter_through_app()
settle_heap()

LONG_TEXT_CHARS = 1500  # longer texts scroll inside a box instead of stretching the page
FLAG_REASONS = ["All responses are bad", "Prompt is broken", "Harmful content", "Other"]
RECENT_ANSWERS = 5  # own answers listed for reopening
PROMPT_PREVIEW_CHARS = 120

# Our own fixed script, no user text in it: puts the caret in this item's ranking box (or, while
# the annotator writes an answer, in the editor) as soon as it is on the page. Streamlit has no
# autofocus, and after a rerun the focus is on the page body (or on a button that was clicked).
# It keeps the box focused for a moment, as the page settles and elements are replaced, unless
# the annotator moved the focus elsewhere themselves.
# The run number at the end makes each run's body differ, so the script runs after every rerun.
FOCUS_SCRIPT = """<script>
(() => {
  const box = () => document.querySelector("%(selector)s");
  const started = Date.now();
  let held = 0;
  const step = () => {
    const el = box();
    const active = document.activeElement;
    if (el && active !== el) {
      if (held > 0 && active && active !== document.body) return;
      el.focus({ preventScroll: true });  // the page stays where it is: the item starts above
      el.setSelectionRange(el.value.length, el.value.length);
      const r = el.getBoundingClientRect();
      if (r.bottom < 0 || r.top > window.innerHeight) el.scrollIntoView({ block: "center" });
    }
    if (el && document.activeElement === el) held += 1;
    if (held < 10 && Date.now() - started < 5000) setTimeout(step, 50);
  };
  step();
})();
</script><!-- run %(run)d -->"""

config = settings()
db = database()
st.title("Rank")

# Read before the ids below, and handed back with an undo or a reopen: a restore since refuses them.
seen_restore = restore_mark(db)
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
    elif kind == "info":
        st.info(message, icon=":material/undo:")


def text_box(text: str) -> None:
    with st.container(border=True, height=300 if len(text) > LONG_TEXT_CHARS else "content"):
        st.text(text if text else "(empty response)")


def header(daily_target: int) -> None:
    who_col, done_col, streak_col, left_col = st.columns([2, 1, 1, 1])
    with who_col:
        st.caption("Ranking as")
        st.text(name)
    figures = progress(db, annotator)
    done = figures.done_today
    done_col.metric(
        "Done today",
        f"{done} / {daily_target}" if daily_target else done,
        help="Rankings and flags since midnight"
        + (f", of today's target of {daily_target}" if daily_target else ""),
    )
    streak_col.metric(
        "In a row",
        figures.streak,
        help=f"Answers this sitting; a pause over {STREAK_BREAK_S / 60:.0f} minutes starts anew",
    )
    left_col.metric(
        "Queue left", tasks_left_for(db, annotator, config.overlap, config.assignment_timeout_s)
    )


def guidelines_beside(text: str) -> None:
    """The operators' guidelines in the sidebar, beside every item, open until collapsed."""
    if not text:
        return
    with st.sidebar.expander("Guidelines", expanded=True, icon=":material/menu_book:"):
        st.markdown(text)  # written by operators; unsafe_allow_html is off, so no HTML


@st.fragment(run_every=1.0)
def wait_for_items() -> None:
    """Shown only while the queue is empty: the worker's progress, until an item is ready."""
    if tasks_left_for(db, annotator, config.overlap, config.assignment_timeout_s):
        st.rerun(scope="app")
    st.info("No items ready yet; the worker is preparing them.")
    show_worker_state()


def on_rank(comparison_id: int, k: int, served_at: float) -> None:
    """Submit callback, bound to the item that was on screen (its id and serving time): a stale
    tab cannot rank another, nor a page shown before a restore an item that took its id."""
    typed = st.session_state.get(f"typed-{comparison_id}", "")
    picks = [st.session_state.get(f"pick-{comparison_id}-{i}") for i in range(k)]
    comment = st.session_state.get(f"comment-{comparison_id}", "")
    try:
        ranks = ranks_from_inputs(typed, picks)
    except RankingError as exc:
        st.session_state["refused"] = (comparison_id, str(exc))
        return
    answer(
        comparison_id,
        served_at,
        "ranked",
        f"Saved {describe_ranking(ranks)}",
        ranks=ranks,
        comment=comment,
    )


def answer(
    comparison_id: int, served_at: float, status: Status, done: str, **details: object
) -> None:
    """Store the answer; a refused one says why and keeps the item on screen."""
    try:
        submit(db, annotator, comparison_id, status, served_at=served_at, **details)
    except DuplicateSubmission as exc:
        flash("warning", str(exc))
    except ItemReplaced as exc:
        forget_item(comparison_id)
        flash("warning", str(exc))
    except (RankingError, StoreError) as exc:
        st.session_state["refused"] = (comparison_id, refusal(exc))
    else:
        flash("success", done)


def refusal(exc: RankingError | StoreError) -> str:
    """What a refused answer says at its box. A store failure (a full disk, a busy database)
    is no fault of the answer, which is kept in the boxes to be sent again as it is."""
    if isinstance(exc, RankingError):
        return str(exc)
    said = str(exc)
    return f"{said[:1].upper()}{said[1:]}. What you entered is kept on this page: submit it again."


# The boxes of one item, named "<box>-<comparison id>" (the picks "pick-<id>-<i>").
ITEM_BOXES = ("typed", "comment", "flag-reason", "flag-detail", "writing")
ITEM_BOXES += ("demo-start", "demo-text", "demo-ranks")  # the written answer's


def forget_item(cid: int) -> None:
    """Empty an item's boxes once it is gone (restored away): the id may come back as another
    item, which must not open with a ranking typed for this one."""
    boxes = {f"{box}-{cid}" for box in ITEM_BOXES}
    for key in list(st.session_state):
        if key in boxes or key.startswith(f"pick-{cid}-"):
            del st.session_state[key]


def on_flag(comparison_id: int, served_at: float) -> None:
    reason = st.session_state.get(f"flag-reason-{comparison_id}") or FLAG_REASONS[-1]
    detail = st.session_state.get(f"flag-detail-{comparison_id}", "").strip()
    answer(
        comparison_id,
        served_at,
        "flagged",
        "Flagged; thank you",
        reason=f"{reason}. {detail}".strip(),
    )


def on_undo(seen: float) -> None:
    try:
        reopened = reopen_last(db, annotator, seen_restore=seen)
    except RestoredSince as exc:
        flash("warning", str(exc))
        return
    if reopened is None:
        flash("warning", "Nothing to undo")
    else:
        bring_back(reopened, "Undone")


def on_reopen(ranking_id: int, seen: float) -> None:
    try:
        reopened = reopen(db, annotator, ranking_id, seen_restore=seen)
    except (RankingError, StoreError) as exc:
        flash("warning", str(exc))
    else:
        bring_back(reopened, "Reopened")


def bring_back(reopened: Reopened, done: str) -> None:
    """Put the retracted answer back in the item's boxes, to correct rather than redo, and say
    what happened to it (the old row is kept, marked retracted)."""
    cid = reopened.comparison_id
    written = demonstration_of(db, reopened.ranking_id)
    ranks_box = f"demo-ranks-{cid}" if written else f"typed-{cid}"
    if reopened.ranks:
        st.session_state[ranks_box] = " ".join(map(str, reopened.ranks))
    if reopened.comment:
        st.session_state[f"comment-{cid}"] = reopened.comment
    if written:
        st.session_state[writing_key(cid)] = True
        st.session_state[f"demo-start-{cid}"] = written.started_from
        st.session_state[f"demo-text-{cid}"] = written.text
        said = (
            "your written answer is retracted and back in the editor: change it and submit it "
            "again, or close the editor and rank"
        )
    elif reopened.status == "ranked" and reopened.ranks:
        said = (
            f"your ranking {describe_ranking(reopened.ranks)} is retracted and back in the box: "
            "change it and press Enter"
        )
    elif reopened.status == "flagged":
        said = (
            f"your flag ({reopened.reason or 'no reason'}) is retracted: rank the item, or flag "
            "it again"
        )
    else:
        said = "your skip is retracted: rank the item, or skip it again"
    flash("info", f"{done}: {said}.")


def writing_key(cid: int) -> str:
    return f"writing-{cid}"


def open_editor(cid: int) -> None:
    st.session_state[writing_key(cid)] = True


def close_editor(cid: int) -> None:
    st.session_state[writing_key(cid)] = False


def prefill(cid: int, texts: list[str]) -> None:
    """The editor starts from the response picked (or empty): replaces what is in it."""
    start = st.session_state.get(f"demo-start-{cid}")
    st.session_state[f"demo-text-{cid}"] = "" if start is None else texts[start]


def on_write(cid: int, generation_ids: list[int], served_at: float) -> None:
    """Submit callback of the editor, bound to the item on screen like the ranking's."""
    start = st.session_state.get(f"demo-start-{cid}")
    typed = st.session_state.get(f"demo-ranks-{cid}", "")
    try:
        ranks = parse_ranking(typed, len(generation_ids)) if typed.strip() else None
        submit_demonstration(
            db,
            annotator,
            cid,
            st.session_state.get(f"demo-text-{cid}", ""),
            max_chars=config.max_prompt_chars,
            counts_as_ranking=config.demonstrations_count_as_rankings,
            started_from=None if start is None else generation_ids[start],
            ranks=ranks,
            served_at=served_at,
        )
    except DuplicateSubmission as exc:
        flash("warning", str(exc))
    except ItemReplaced as exc:
        forget_item(cid)
        flash("warning", str(exc))
    except (RankingError, StoreError) as exc:
        st.session_state["refused-writing"] = (cid, refusal(exc))
    else:
        counted = " as a ranking above every response" * config.demonstrations_count_as_rankings
        given = f"; your order of the responses: {describe_ranking(ranks)}" if ranks else ""
        flash("success", f"Saved your answer{counted}{given}")


def editor(task: Task) -> None:
    """The annotator's own answer: start from a response or empty, edit, submit."""
    cid = task.comparison_id
    labels = response_labels(task.k)
    who_k = f"{labels[0]}–{labels[-1]}"
    if config.demonstrations_count_as_rankings:
        st.caption(
            f"Your answer also counts as a ranking in which it beats all {task.k} responses: "
            f"they keep your order of them if you give one below, otherwise they tie below it."
        )
    else:
        st.caption(
            "Your answer is stored as an example of a good answer; it does not count as a "
            "ranking of the responses (the operator turned that off)."
        )
    st.selectbox(
        "Start from",
        [None, *range(task.k)],
        format_func=lambda i: "Empty" if i is None else f"Response {labels[i]}",
        key=f"demo-start-{cid}",
        on_change=prefill,
        args=(cid, [r.text for r in task.responses]),
    )
    refused_cid, message = st.session_state.pop("refused-writing", (None, None))
    with st.form(key=f"demo-{cid}", border=False):
        st.text_area("Your answer", height=200, key=f"demo-text-{cid}")
        if refused_cid == cid:
            st.error(message, icon=":material/error:")
        st.text_input(
            f"Your ranking of {who_k} (optional)",
            placeholder="e.g. 1 2 2 3 or B > A = C; empty: they tie below your answer",
            key=f"demo-ranks-{cid}",
        )
        st.form_submit_button(
            "Submit answer",
            type="primary",
            icon=":material/send:",
            on_click=on_write,
            args=(cid, [r.generation_id for r in task.responses], task.served_at),
        )
    st.button("Close the editor", key=f"demo-close-{cid}", on_click=close_editor, args=(cid,))


def rank_form(task: Task) -> None:
    cid = task.comparison_id
    labels = response_labels(task.k)
    refused_cid, message = st.session_state.pop("refused", (None, None))
    with st.form(key=f"rank-{cid}", border=False):
        typed_col, comment_col = st.columns([3, 2])
        typed_col.text_input(
            "Ranking",
            placeholder=f"ranks in order, e.g. {' '.join(map(str, range(1, task.k + 1)))}"
            ", or B > A = C; Enter submits",
            key=f"typed-{cid}",
        )
        if refused_cid == cid:  # at the box it is about, not below the responses
            typed_col.error(message, icon=":material/error:")
        comment_col.text_input(
            "Comment (optional)",
            placeholder="anything the ranking does not say; stored with it",
            max_chars=MAX_COMMENT_CHARS,
            key=f"comment-{cid}",
        )
        # One row of columns per line of responses, so the page (and Tab) reads A, B, C, D;
        # filling columns top to bottom would make it A, C, B, D.
        per_row = 2 if task.k <= 4 else 3
        for start in range(0, task.k, per_row):
            row = st.columns(per_row)
            for col, i in zip(row, range(start, min(start + per_row, task.k)), strict=False):
                with col:
                    response_cell(cid, i, labels[i], task)
        st.form_submit_button(
            "Submit",
            type="primary",
            icon=":material/send:",
            on_click=on_rank,
            args=(cid, task.k, task.served_at),
        )


def response_cell(cid: int, i: int, label: str, task: Task) -> None:
    response = task.responses[i]
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


def actions(task: Task) -> None:
    cid = task.comparison_id
    skip_col, undo_col, flag_col, write_col = st.columns(4)
    skip_col.button(
        "Skip",
        icon=":material/skip_next:",
        shortcut="Alt+S",
        on_click=answer,
        args=(cid, task.served_at, "skipped", "Skipped"),
    )
    undo_col.button(
        "Undo last submission",
        icon=":material/undo:",
        shortcut="Alt+Z",
        on_click=on_undo,
        args=(seen_restore,),
    )
    # A key per item: the next item gets a new, closed popover (with one key for all items the
    # browser kept it open over the next item's responses).
    popover = flag_col.popover("Flag…", icon=":material/flag:", key=f"flag-popover-{cid}")
    with popover, st.form(f"flag-{cid}"):
        st.selectbox("Why", FLAG_REASONS, key=f"flag-reason-{cid}")
        st.text_input("Details (optional)", max_chars=500, key=f"flag-detail-{cid}")
        st.form_submit_button("Flag this item", on_click=on_flag, args=(cid, task.served_at))
    write_col.button(
        "Write a better answer",
        icon=":material/edit_note:",
        shortcut="Alt+W",
        on_click=open_editor,
        args=(cid,),
        help="Opens an editor, empty or prefilled with a response you pick",
    )


def recent() -> None:
    """The annotator's last answers, each reopenable for correction; drawn (and queried) only
    while the list is open, so it costs an item change nothing."""
    box = st.expander(
        f"Your last {RECENT_ANSWERS} answers",
        icon=":material/history:",
        key="recent-answers",
        on_change="rerun",
    )
    if not box.open:
        return
    with box:
        answers = recent_answers(db, annotator, RECENT_ANSWERS)
        if not answers:
            st.caption("None yet.")
        for given in answers:
            what_col, button_col = st.columns([5, 1], vertical_alignment="center")
            at = dt.datetime.fromtimestamp(given.created_at).strftime("%H:%M")
            if given.status == "ranked" and given.ranks:
                said = describe_ranking(given.ranks)
            elif given.status == "demonstrated":
                said = "wrote an answer"
            else:
                said = given.status + (f": {given.reason}" if given.reason else "")
            what_col.caption(f"{at} · {given.status}")
            prompt = given.prompt
            if len(prompt) > PROMPT_PREVIEW_CHARS:
                prompt = prompt[:PROMPT_PREVIEW_CHARS] + "…"
            what_col.text(prompt)  # user texts (prompt, reason, comment) as plain text only
            what_col.text(said + (f" · {given.comment}" if given.comment else ""))
            button_col.button(
                "Reopen",
                key=f"reopen-{given.ranking_id}",
                icon=":material/edit:",
                on_click=on_reopen,
                args=(given.ranking_id, seen_restore),
            )


def keep_focus_in_ranking_box(cid: int, writing: bool) -> None:
    """The ranking box, or the editor while it is open (selectors of our own, no user text)."""
    runs = st.session_state.get("focus-runs", 0) + 1
    st.session_state["focus-runs"] = runs
    selector = f".st-key-demo-text-{cid} textarea" if writing else f".st-key-typed-{cid} input"
    st.html(FOCUS_SCRIPT % {"selector": selector, "run": runs}, unsafe_allow_javascript=True)


try:
    task = next_task(
        db,
        annotator,
        config.overlap,
        config.assignment_timeout_s,
        gold_every=config.gold_every,
        name=name,
    )
except StoreError as exc:
    st.error(f"{exc}. Reload the page in a moment.")
    st.stop()
guidelines = current_guidelines(db)
guidelines_beside(guidelines.text)
header(guidelines.daily_target)
show_flash()
if task is None:
    wait_for_items()
    st.stop()

st.subheader("Prompt")
text_box(task.prompt)
rank_form(task)
actions(task)
writing = bool(st.session_state.get(writing_key(task.comparison_id)))
if writing:
    editor(task)
recent()
keep_focus_in_ranking_box(task.comparison_id, writing)
