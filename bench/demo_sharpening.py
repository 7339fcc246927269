"""How far the demo's base model is from answering its arithmetic right: correctness of the
base sampled at lower temperatures, and what each temperature costs in KL to the base.

The demo loop's first PPO round is judged by held-out arithmetic correctness at T=1 (the
README's "See it learn"). The base already knows most answers; what a round can gain is mostly
sharpening. This prints, for T in 1.0 .. 0.1, the share of right answers (32 samples per
held-out prompt, the demo's figure, with its standard error over prompts; drawn by
``generate`` on the prompt as the sampler formats it) and the KL of the
tempered policy to the base in nats per response, E_{y~p_T}[log p_T(y) - log p(y)], summed over
response tokens up to the end token, so a PPO round's KL can be read against it.

    python bench/demo_sharpening.py

Writes bench/out/demo_sharpening.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from rlhf_loop.config import Settings  # noqa: E402
from rlhf_loop.demo_command import (  # noqa: E402
    CORRECTNESS_SAMPLES,
    HUMAN_DEMO_SETTINGS,
    add_demo_prompts,
    held_out_arithmetic,
    mean_and_se,
)
from rlhf_loop.model.demo_corpus import ARITHMETIC  # noqa: E402
from rlhf_loop.model.loader import load_causal_lm, resolve_model_path  # noqa: E402
from rlhf_loop.model.prompting import format_prompt  # noqa: E402
from rlhf_loop.simulate import ArithmeticOracle  # noqa: E402
from rlhf_loop.store.db import open_db  # noqa: E402

OUT = REPO / "bench" / "out"
TEMPERATURES = (1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1)
MAX_NEW_TOKENS = HUMAN_DEMO_SETTINGS["max_new_tokens"]


@torch.no_grad()
def tempered(model, tokenizer, prompt: str, temperature: float) -> tuple[list[str], list[float]]:
    """CORRECTNESS_SAMPLES answers drawn at ``temperature`` and each one's log p_T - log p."""
    query = tokenizer(
        format_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False
    )
    ids = query.input_ids.repeat(CORRECTNESS_SAMPLES, 1)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=tokenizer.eos_token_id,
    )
    tokens = out.sequences[:, ids.shape[1] :]
    logits = torch.stack(out.logits, 1).float()
    picked = tokens.unsqueeze(-1)
    logp = torch.log_softmax(logits, -1).gather(-1, picked).squeeze(-1)
    logp_t = torch.log_softmax(logits / temperature, -1).gather(-1, picked).squeeze(-1)
    ended = (tokens == tokenizer.eos_token_id).int()
    alive = (ended.cumsum(1) - ended) == 0  # up to and including the end token
    kl = ((logp_t - logp) * alive).sum(1).tolist()
    texts = [
        tokenizer.decode(t[a], skip_special_tokens=True) for t, a in zip(tokens, alive, strict=True)
    ]
    return texts, kl


def main() -> None:
    settings = Settings(data_dir=tempfile.mkdtemp(prefix="sharpening-"), **HUMAN_DEMO_SETTINGS)
    db = open_db(settings.resolved_db_path)
    add_demo_prompts(db, None, (ARITHMETIC,))
    prompts = held_out_arithmetic(db, settings)
    model, tokenizer = load_causal_lm(resolve_model_path(Settings()), "cpu")
    oracle = ArithmeticOracle()
    torch.manual_seed(0)
    rows = []
    for temperature in TEMPERATURES:
        shares, kls = [], []
        for prompt in prompts:
            texts, kl = tempered(model, tokenizer, prompt, temperature)
            shares.append(
                sum(oracle.score(prompt, t) == oracle.correct for t in texts) / len(texts)
            )
            kls.extend(kl)
        correct, se = mean_and_se(shares)
        row = {"temperature": temperature, "correct": correct, "se": se, "kl": sum(kls) / len(kls)}
        rows.append(row)
        print(f"T={temperature:.1f}: correct {correct:.3f} (±{se:.3f}), KL {row['kl']:.2f} nats")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "demo_sharpening.json"
    out.write_text(json.dumps({"prompts": len(prompts), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
