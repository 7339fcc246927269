"""Data page: import prompts, see what the database holds, export rankings."""

import streamlit as st

from pages.common import database, require_operator, settings
from rlhf_loop.export import pair_records, ranking_records, to_jsonl
from rlhf_loop.prompt_import import PromptImportError, parse_prompt_file
from rlhf_loop.store.db import StoreError, open_db
from rlhf_loop.store.prompts import add_prompts

require_operator()
config = settings()
db = database()
st.title("Data")

counts = st.columns(4)
for column, table in zip(
    counts, ["prompts", "generations", "comparisons", "rankings"], strict=True
):
    column.metric(table.capitalize(), db[table].count)

st.subheader("Import prompts")
st.caption(
    'A .txt file with one prompt per line, a .jsonl file with a "prompt" field per line '
    '(optional "label"), or a .csv file with a "prompt" column (optional "label"). '
    "A file with any malformed row is refused whole; duplicates are skipped."
)
with st.form("import", clear_on_submit=True):
    upload = st.file_uploader("Prompt file", type=["txt", "jsonl", "csv"])
    if st.form_submit_button("Import", type="primary") and upload is not None:
        try:
            parsed = parse_prompt_file(upload.name, upload.getvalue(), config.max_prompt_chars)
            report = add_prompts(db, parsed, upload.name)
        except (PromptImportError, StoreError) as exc:
            st.error(f"{upload.name}: {exc}. Nothing was imported.", icon=":material/error:")
        else:
            st.success(f"{upload.name}: {report.summary()}.", icon=":material/check:")


def _export(shape: str) -> str:
    """Runs in Streamlit's download thread, so it opens its own connection."""
    records = ranking_records(open_db(config.resolved_db_path))
    return to_jsonl(pair_records(records) if shape == "pairs" else records)


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
pairs_col.caption("prompt, chosen, rejected per strictly ordered pair; ties give no pair.")
