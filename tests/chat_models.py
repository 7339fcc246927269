"""Tiny Llama- and Qwen2-family chat models built locally: random weights, a byte-level BPE
tokenizer trained on the demo corpus in a second, and each family's own chat template and
special tokens, saved as ordinary model directories (what users bring, minus the size).

Llama 3 ships without a pad token and ends a turn with ``<|eot_id|>``; Qwen2 pads with
``<|endoftext|>`` and ends a turn with ``<|im_end|>``. Both differences reach the loop: the
loader must pick a pad token, and the reward model's head must find the last real token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from rlhf_loop.model.demo_corpus import demo_examples

LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FAMILIES = {
    "llama": {
        "special": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
        "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "template": LLAMA_TEMPLATE,
    },
    "qwen2": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "template": QWEN_TEMPLATE,
    },
}


def build_chat_model(family: str, out_dir: Path) -> Path:
    """Save a random-weight ``family`` model with a chat-templated tokenizer in ``out_dir``."""
    spec = FAMILIES[family]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((f"{p} {r}" for p, r in demo_examples(400, seed=0)), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, clean_up_tokenization_spaces=False, **spec["tokens"]
    )
    tokenizer.chat_template = spec["template"]
    ids = {
        name.replace("_token", "_token_id"): tokenizer.convert_tokens_to_ids(token)
        for name, token in spec["tokens"].items()
    }
    sizes = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        **ids,
    )
    torch.manual_seed(0)
    model = (
        LlamaForCausalLM(LlamaConfig(**sizes))
        if family == "llama"
        else Qwen2ForCausalLM(Qwen2Config(**sizes))
    )
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
