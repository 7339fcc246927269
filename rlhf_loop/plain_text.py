"""User text inside Streamlit's message boxes, which render Markdown: shown as typed.

``st.error`` and friends have no plain-text mode, and an uploaded file's name or a quoted line
of its content is user text: ``**x**`` would turn bold, ``[a](b)`` into a link. Escaping every
Markdown punctuation mark makes it read exactly as it was written.
"""

from __future__ import annotations

import re

# CommonMark's escapable punctuation, plus Streamlit's own ":material/...:" and "$...$" syntax.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def markdown_escaped(text: str) -> str:
    """``text`` with every Markdown-active character backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", text)
