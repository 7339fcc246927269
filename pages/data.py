"""Data page: import prompts, gold items and demonstrations, see what the database holds, export
rankings and demonstrations, browse and retire prompts."""

import io
from collections.abc import Callable

import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings
from rlhf_loop.demonstration_import import parse_demonstration_file
from rlhf_loop.export import ExportShape, download_file, export_jsonl
from rlhf_loop.export_sft import export_sft_jsonl
from rlhf_loop.gold_import import parse_gold_file
from rlhf_loop.plain_text import markdown_escaped
from rlhf_loop.prompt_import import PromptImportError, parse_prompt_file
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.demonstrations import add_imported
from rlhf_loop.store.gold import add_gold_items
from rlhf_loop.store.prompt_list import (
    PAGE_SIZE,
    SHOWN,
    PromptPage,
    prompt_page,
    prompt_text,
    restore_prompts,
    retire_prompts,
)
from rlhf_loop.store.prompts import add_prompts

enter_through_app()

require_operator()
config = settings()
db = database()
st.title("Data")

# Drawn here, filled after the imports below have run: a count read before an import is
# applied lags one import behind.
counts_slot = st.container()


def show_counts() -> None:
    counts = counts_slot.columns(5)
    for column, table in zip(
        counts, ["prompts", "generations", "comparisons", "rankings", "demonstrations"], strict=True
    ):
        column.metric(table.capitalize(), db[table].count)


def import_form(key: str, label: str, types: list[str], store: Callable[[str, bytes], str]) -> None:
    """An upload, parsed and stored whole or not at all; ``store`` returns the summary."""
    with st.form(key, clear_on_submit=True):
        upload = st.file_uploader(label, type=types)
        if st.form_submit_button(f"Import {label.lower()}", type="primary") and upload:
            try:
                summary = store(upload.name, upload.getvalue())
            except (PromptImportError, StoreError) as exc:
                message = markdown_escaped(f"{upload.name}: {exc}")
                st.error(f"{message}. Nothing was imported.", icon=":material/error:")
            else:
                st.success(f"{markdown_escaped(upload.name)}: {summary}.", icon=":material/check:")


def store_prompts(name: str, data: bytes) -> str:
    return add_prompts(db, parse_prompt_file(name, data, config.max_prompt_chars), name).summary()


def store_gold(name: str, data: bytes) -> str:
    items = parse_gold_file(name, data, config.max_prompt_chars)
    return add_gold_items(db, items, f"gold:{name}").summary()


st.subheader("Import prompts")
st.caption(
    'A .txt file with one prompt per line, a .jsonl file with a "prompt" field per line '
    '(optional "label"), or a .csv file with a "prompt" column (optional "label"). '
    'A label is "open" or "closed" in any case, or empty for none. '
    "A file with any malformed row is refused whole; duplicates are skipped."
)
import_form("import", "Prompt file", ["txt", "jsonl", "csv"], store_prompts)

st.subheader("Import gold items")
st.caption(
    "Items with a known order, to check annotators: a .jsonl file, one object per line: "
    '{"prompt": "...", "responses": ["...", "..."], "ranks": [1, 2]} (1 = best, equal = tie). '
    f"Each annotator gets each gold item once, one in every {config.gold_every or '—'} items "
    "(setting gold_every); their answers feed the Dashboard, not the reward model."
)
import_form("gold", "Gold file", ["jsonl"], store_gold)


def store_demonstrations(name: str, data: bytes) -> str:
    parsed = parse_demonstration_file(name, data, config.max_prompt_chars)
    return add_imported(db, parsed, name).summary()


st.subheader("Import demonstrations")
st.caption(
    "Answers written by people, for supervised fine-tuning: a .jsonl file, one object per line: "
    '{"prompt": "...", "response": "..."} or {"messages": [{"role": "user", "content": "..."}, '
    '{"role": "assistant", "content": "..."}]}. A prompt not stored yet is added as a prompt. '
    "A file with any malformed line is refused whole; duplicates are skipped. Imported answers "
    "have no responses to beat, so they never count as rankings."
)
import_form("demonstrations", "Demonstration file", ["jsonl"], store_demonstrations)
show_counts()


def _export(shape: ExportShape) -> io.RawIOBase:
    """Runs in Streamlit's download thread, so it opens its own connection."""
    return download_file(lambda out: export_jsonl(open_db(config.resolved_db_path), shape, out))


st.subheader("Export rankings")
# No rerun on click (on_click="ignore"): a rerun replaces both buttons' files, and a click on the
# other one before the browser had the new ones downloaded nothing ("Deferred file ... not found").
full_col, pairs_col = st.columns(2)
full_col.download_button(
    "Full rankings (JSONL)",
    data=lambda: _export("full"),
    file_name="rankings.jsonl",
    mime="application/jsonl",
    icon=":material/download:",
    on_click="ignore",
)
full_col.caption("One line per ranking: the prompt and each response with its rank (ties kept).")
pairs_col.download_button(
    "Chosen/rejected pairs for TRL (JSONL)",
    data=lambda: _export("pairs"),
    file_name="pairs.jsonl",
    mime="application/jsonl",
    icon=":material/download:",
    on_click="ignore",
)
pairs_col.caption(
    "prompt, chosen, rejected per strictly ordered pair; ties give no pair. The prompt is the "
    "raw text annotators saw, without the app's prompt template: TRL's RewardTrainer joins "
    "prompt and response as they are, and applies a chat template only to conversational rows."
)

st.subheader("Export demonstrations")
st.download_button(
    "Demonstrations for TRL's SFT (JSONL)",
    data=lambda: download_file(lambda out: export_sft_jsonl(open_db(config.resolved_db_path), out)),
    file_name="demonstrations.jsonl",
    mime="application/jsonl",
    icon=":material/download:",
    on_click="ignore",
)
st.caption(
    'One {"messages": [user prompt, assistant answer]} per live demonstration (undone ones and '
    "those on retired prompts left out): TRL's conversational format, which SFTTrainer reads "
    "with the tokenizer's chat template."
)


st.subheader("Prompts")
st.caption(
    "Every prompt, oldest first: its label, the items sampled from it for ranking, its live "
    "rankings, whether it is a gold item's, and whether it is retired (no longer sampled, served "
    "or trained on; its rows stay). Select rows to retire or restore them."
)
LIST_MESSAGE, LIST_NONCE = "_prompt_list_message", "_prompt_list_nonce"


def reset_page() -> None:
    st.session_state["prompt_page"] = 1


def change_prompts(action: str, shown_ids: list[int], table_key: str) -> None:
    """Button callback, run with the ids of the page the operator selected on, so the rows
    selected are the prompts that were on screen, whatever the database holds now."""
    selection = st.session_state.get(table_key, {}).get("selection", {}).get("rows", [])
    chosen = [shown_ids[i] for i in selection if 0 <= i < len(shown_ids)]
    if not chosen:
        st.session_state[LIST_MESSAGE] = ("info", "Select one or more rows first.")
        return
    apply = retire_prompts if action == "retire" else restore_prompts
    try:
        changed = apply(database(), chosen, st.session_state["operator"])
    except StoreError as exc:
        st.session_state[LIST_MESSAGE] = ("error", f"Nothing was changed: {exc}")
        return
    done = "retired" if action == "retire" else "restored"
    unchanged = len(chosen) - len(changed)
    note = f"; {unchanged} already were" if unchanged else ""
    st.session_state[LIST_MESSAGE] = ("success", f"{len(changed)} prompt(s) {done}{note}.")
    st.session_state[LIST_NONCE] = st.session_state.get(LIST_NONCE, 0) + 1  # clear the selection


def prompt_list() -> None:
    search_col, shown_col, page_col = st.columns([3, 2, 1])
    search = search_col.text_input(
        "Search the prompts", key="prompt_search", on_change=reset_page, max_chars=500
    )
    shown = shown_col.segmented_control(
        "Show", SHOWN, default="all", key="prompt_shown", on_change=reset_page
    )
    asked = page_col.number_input("Page", min_value=1, step=1, key="prompt_page")
    listing: PromptPage = prompt_page(db, search, shown or "all", int(asked))
    st.caption(
        f"{listing.matching} prompt(s) match; page {listing.page} of {listing.pages}, "
        f"{PAGE_SIZE} per page."
    )
    outcome = st.session_state.pop(LIST_MESSAGE, None)
    if outcome is not None:
        {"success": st.success, "info": st.info, "error": st.error}[outcome[0]](outcome[1])
    if not listing.rows:
        st.text("No prompt matches." if db["prompts"].count else "No prompts yet: import some.")
        return
    nonce = st.session_state.get(LIST_NONCE, 0)
    table_key = f"prompt_rows-{search}-{shown}-{listing.page}-{nonce}"
    picked = st.dataframe(
        listing.rows,
        hide_index=True,
        width="stretch",
        key=table_key,
        on_select="rerun",
        selection_mode="multi-row",
        column_config={
            "id": st.column_config.NumberColumn("id", width="small"),
            "prompt": st.column_config.TextColumn("prompt", width="large"),
        },
    )
    retire_col, restore_col, _ = st.columns([1, 1, 3])
    for column, action, label in (
        (retire_col, "retire", "Retire selected"),
        (restore_col, "restore", "Restore selected"),
    ):
        column.button(
            label,
            key=f"prompt-{action}",
            on_click=change_prompts,
            args=(action, listing.ids, table_key),
        )
    rows = picked.selection.rows if picked else []
    if len(rows) == 1 and rows[0] < len(listing.rows):
        st.caption(f"Prompt {listing.ids[rows[0]]} in full")
        st.text(prompt_text(db, listing.ids[rows[0]]) or "")


prompt_list()
