"""Data page: import prompts, see what the database holds, export rankings."""

from collections.abc import Callable

import streamlit as st

from pages.common import database, enter_through_app, require_operator, settings
from rlhf_loop.export import ExportShape, export_jsonl
from rlhf_loop.gold_import import parse_gold_file
from rlhf_loop.prompt_import import PromptImportError, parse_prompt_file
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.gold import add_gold_items
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
    counts = counts_slot.columns(4)
    for column, table in zip(
        counts, ["prompts", "generations", "comparisons", "rankings"], strict=True
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
                st.error(f"{upload.name}: {exc}. Nothing was imported.", icon=":material/error:")
            else:
                st.success(f"{upload.name}: {summary}.", icon=":material/check:")


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
show_counts()


def _export(shape: ExportShape) -> str:
    """Runs in Streamlit's download thread, so it opens its own connection."""
    return export_jsonl(open_db(config.resolved_db_path), shape)


st.subheader("Export rankings")
full_col, pairs_col = st.columns(2)
full_col.download_button(
    "Full rankings (JSONL)",
    data=lambda: _export("full"),
    file_name="rankings.jsonl",
    mime="application/jsonl",
    icon=":material/download:",
)
full_col.caption("One line per ranking: the prompt and each response with its rank (ties kept).")
pairs_col.download_button(
    "Chosen/rejected pairs for TRL (JSONL)",
    data=lambda: _export("pairs"),
    file_name="pairs.jsonl",
    mime="application/jsonl",
    icon=":material/download:",
)
pairs_col.caption(
    "prompt, chosen, rejected per strictly ordered pair; ties give no pair. The prompt is the "
    "raw text annotators saw, without the app's prompt template: TRL's RewardTrainer joins "
    "prompt and response as they are, and applies a chat template only to conversational rows."
)
