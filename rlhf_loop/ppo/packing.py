"""PPO's forward passes over a rollout with each prompt read once and no padding in between.

The plain batch (``Rollout.input_ids``) is every sample's prompt, left-padded to the longest
prompt, then its response, right-padded to the longest response: on the demo's rollouts (16
prompts x 2 samples) 1,120 positions for 630 real tokens, and each prompt run once per sample.
Packed, the samples of one prompt share one copy of it: the prompt, then each sample's response
after it, under a block attention mask (a response sees its prompt and itself, never a sibling),
with position ids restarting after the prompt for each response, so every response token sees
what it sees in the plain batch at the same positions: the same log-probs, values and gradients
to float rounding, from about 450 positions. Groups are spread over rows of about half the hidden
size (a longer group gets a row of its own): attention costs grow with a row's width and the
linear layers' with the hidden size (see ``row_width``).

The LM head runs only where a response token is predicted (the prompt's positions need none).
That reads the head as a plain projection of the last hidden state; a model whose logits are
anything else (Gemma 2's soft-capping, Granite's scaling), one not run by scaled-dot-product
attention (the kernel that reads a 4D boolean mask as it is) and an encoder keep the plain batch:
``packs_responses`` checks each policy model once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from rlhf_loop.ppo.math import entropy_from_logits, logprobs_from_logits
from rlhf_loop.ppo.policy import Policy, forward, no_dropout, reference_weights
from rlhf_loop.ppo.rollout import Rollout
from rlhf_loop.ppo.rollout_sampling import last_logits_only
from rlhf_loop.reward.shared_prefix import block_causal_mask, shares_prefixes

_PACKS: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PackedResponses:
    """R rows of packed prompt groups. ``groups`` labels each column with its group in the row
    (-1 on padding), ``members`` with 0 on the prompt and i + 1 on the group's i-th response;
    ``at`` holds, for each packed sample and response position t, the (row, column) whose
    output predicts response token t (past a response's end: a column of its own group)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    groups: torch.Tensor
    members: torch.Tensor
    at: tuple[torch.Tensor, torch.Tensor]  # [n, T] each

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": block_causal_mask(self.groups, self.members),
            "position_ids": self.position_ids,
        }


def pack_responses(batch: Rollout, rows: torch.Tensor, width: int) -> PackedResponses:
    """The samples ``rows`` of ``batch`` packed: each distinct prompt among them once, followed
    by their responses up to and including the end token, in as few rows as ``width`` allows
    (``_balanced_rows``); a row keeps its groups in order of first appearance."""
    prompt_of = batch.prompt_index().tolist()
    lengths = batch.response_mask.sum(-1).tolist()
    members: dict[int, list[int]] = {}
    for i in rows.tolist():
        members.setdefault(prompt_of[i], []).append(i)
    groups = list(members.values())
    prompts = [batch.query_ids[g[0]][batch.query_mask[g[0]].bool()].tolist() for g in groups]
    sizes = [len(p) + sum(lengths[i] for i in g) for p, g in zip(prompts, groups, strict=True)]
    packed: list[tuple[list[int], list[int], list[int], list[int]]] = []  # ids, pos, group, member
    at_row: dict[int, int] = {}
    at_columns: dict[int, list[int]] = {}
    for r, row_groups in enumerate(_balanced_rows(sizes, width)):
        ids: list[int] = []
        positions: list[int] = []
        labels: list[int] = []
        member: list[int] = []
        for label, g in enumerate(row_groups):
            prompt = prompts[g]
            last_prompt = len(ids) + len(prompt) - 1  # predicts every response's first token
            ids += prompt
            positions += range(len(prompt))
            labels += [label] * len(prompt)
            member += [0] * len(prompt)
            for k, i in enumerate(groups[g], start=1):
                start = len(ids)
                ids += batch.response_ids[i][: lengths[i]].tolist()
                positions += range(len(prompt), len(prompt) + lengths[i])
                labels += [label] * lengths[i]
                member += [k] * lengths[i]
                at_row[i] = r
                at_columns[i] = [last_prompt, *range(start, start + lengths[i] - 1)]
        packed.append((ids, positions, labels, member))
    w = max(len(row[0]) for row in packed)
    fills = (0, 0, -1, -1)  # ids (any id: padding is attended by nothing), positions, labels
    table = torch.tensor(
        [[v + [f] * (w - len(v)) for v, f in zip(row, fills, strict=True)] for row in packed],
        dtype=torch.long,
    )  # [R, 4, W]
    steps = batch.response_ids.shape[1]
    order = rows.tolist()
    at_r = torch.tensor([[at_row[i]] * steps for i in order], dtype=torch.long)
    at_c = torch.tensor(
        [at_columns[i] + [at_columns[i][-1]] * (steps - len(at_columns[i])) for i in order],
        dtype=torch.long,
    )
    return PackedResponses(table[:, 0], table[:, 1], table[:, 2], table[:, 3], (at_r, at_c))


def _balanced_rows(sizes: list[int], width: int) -> list[list[int]]:
    """Groups (by index) spread over the fewest rows of about ``width`` positions that can hold
    them, each next group (longest first) into the shortest row, so rows come out nearly equal:
    filling one row to the brim left a short last row padded to the full width (rows of 224
    for 260 tokens on a 256-wide model, 1.5x the work)."""
    count = max(1, -(-sum(sizes) // width))
    rows: list[list[int]] = [[] for _ in range(count)]
    filled = [0] * count
    for g in sorted(range(len(sizes)), key=lambda g: -sizes[g]):
        shortest = filled.index(min(filled))
        rows[shortest].append(g)
        filled[shortest] += sizes[g]
    return [sorted(row) for row in rows if row]


def packs_responses(policy: Policy) -> bool:
    """Whether packed rows give ``policy`` the plain batch's outputs: causal attention by the
    sdpa kernel, and logits that are the output embedding of the last hidden state (checked
    once per model on a few tokens)."""
    model = policy.model
    if model not in _PACKS:
        _PACKS[model] = shares_prefixes(model) and _head_reads_last_hidden(policy)
    return _PACKS[model]


@torch.no_grad()
def _head_reads_last_hidden(policy: Policy) -> bool:
    head = policy.model.get_output_embeddings()
    if head is None or not last_logits_only(policy.model):
        return False
    ids = torch.arange(1, 9, device=policy.device).remainder(policy.model.config.vocab_size)[None]
    mask = torch.ones_like(ids)
    out = policy.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return torch.allclose(
        head(out.hidden_states[-1]).float(), out.logits.float(), rtol=1e-3, atol=1e-3
    )


def row_width(policy: Policy) -> int:
    """Half the hidden size: a row this wide spends about 1/12 of the linear layers' FLOPs on
    attention, and a CPU's masked attention is slower per FLOP than its matmuls. Measured on a
    minibatch of 16 (forward + backward): on a 6 x 256 model, rows of 128 took 149 ms, of 256
    180 ms and the padded batch 313 ms; on the demo (4 x 128) rows of 64 and 128 tied."""
    config = policy.model.config
    hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 2048
    return max(32, int(hidden) // 2)


@dataclass(frozen=True)
class ResponseOutputs:
    """Per response token [n, T] of the samples asked for, at the rollout's temperature; past a
    response's end: 0 (packed) or values of no meaning (plain). Callers mask them."""

    logprobs: torch.Tensor
    values: torch.Tensor | None  # the value head's, where asked for
    entropy: torch.Tensor | None  # no gradient; where asked for


def response_outputs(
    policy: Policy,
    batch: Rollout,
    rows: torch.Tensor | None,
    with_values: bool,
    with_entropy: bool = False,
) -> ResponseOutputs:
    """Log-probs of the response tokens of the samples ``rows`` (None: all), with their values
    and entropies, under whatever weights are active (see ``reference_weights``)."""
    if rows is None:
        rows = torch.arange(len(batch.texts))
    tokens = batch.response_ids[rows].to(policy.device)
    if not packs_responses(policy):
        logits, values = forward(
            policy, batch.input_ids[rows], batch.attention_mask[rows], with_values
        )
        values = batch.response_slice(values) if values is not None else None
        return _outputs(
            batch.response_slice(logits), tokens, batch.temperature, with_entropy, values
        )
    no_dropout(policy)
    packed = pack_responses(batch, rows, row_width(policy))
    device = policy.device
    out = policy.model(
        **{k: v.to(device) for k, v in packed.model_inputs().items()},
        output_hidden_states=True,
        logits_to_keep=1,
    )
    # the head only where a response token is predicted: [m, H] -> [m, V]
    real = batch.response_mask[rows].bool().to(device)
    hidden = out.hidden_states[-1][packed.at[0].to(device)[real], packed.at[1].to(device)[real]]
    logits = policy.model.get_output_embeddings()(hidden)
    flat = _outputs(
        logits[None],
        tokens[real][None],
        batch.temperature,
        with_entropy,
        policy.values(hidden)[None] if with_values else None,
    )
    return ResponseOutputs(
        _spread(flat.logprobs, real), _spread(flat.values, real), _spread(flat.entropy, real)
    )


def _outputs(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float,
    with_entropy: bool,
    values: torch.Tensor | None,
) -> ResponseOutputs:
    logprobs = logprobs_from_logits(logits, tokens, temperature=temperature)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach(), temperature=temperature)
    return ResponseOutputs(logprobs, values, entropy)


def _spread(flat: torch.Tensor | None, real: torch.Tensor) -> torch.Tensor | None:
    """[1, m] values of the real response tokens back to [n, T], zeros elsewhere."""
    if flat is None:
        return None
    return flat.new_zeros(real.shape).index_put(real.nonzero(as_tuple=True), flat[0])


def reference_logprobs(policy: Policy, batch: Rollout) -> torch.Tensor:
    """The reference's log-probs [B, T] of every response token."""
    with torch.no_grad(), reference_weights(policy):
        return response_outputs(policy, batch, None, with_values=False).logprobs
