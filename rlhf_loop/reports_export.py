"""A policy version's export for the Training page's download buttons, safe when both buttons
are clicked at once.

Streamlit runs each button's callable in its own thread. The first export of a server imports
torch, transformers and peft; two threads doing that together failed in Chromium with
``cannot import name 'AutoModelForCausalLM' from 'transformers'`` (transformers resolves its
names lazily, and a half-imported module is visible to the other thread), and the click
downloaded nothing. The imports run under one lock; merged builds, which each hold a whole model
in memory, run one at a time.
"""

from __future__ import annotations

import threading

from rlhf_loop.config import Settings

_IMPORTS = threading.Lock()
_MERGING = threading.Lock()


def policy_export_zip(settings: Settings, version_dir: str, merged: bool) -> bytes:
    """The version's LoRA adapter as saved, or merged into its base model, as zip bytes."""
    with _IMPORTS:
        from rlhf_loop.model.loader import resolve_model_path
        from rlhf_loop.ppo.export import adapter_zip, merged_zip

    if not merged:
        return adapter_zip(version_dir)
    with _MERGING:
        return merged_zip(resolve_model_path(settings), version_dir)
