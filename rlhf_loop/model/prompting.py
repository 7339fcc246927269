"""How a bare prompt is shown to a model.

Chat models were tuned on their own template, so they get it; base models (the demo model among
them) get a plain "Question/Answer" frame. The demo corpus is written through this same function,
which is what makes the demo model answer in the frame the sampler will use.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

PROMPT_TEMPLATE = "Question: {prompt}\nAnswer:"


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The text the model continues; its response starts right after it."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return PROMPT_TEMPLATE.format(prompt=prompt)
