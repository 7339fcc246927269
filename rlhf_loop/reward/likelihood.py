"""A reward model that starts from what its backbone already knows: how much more (or less)
likely it finds the response than it expects its own answers to be.

Measured on the demo (issue 12): a scalar head on the last token, trained on 200 noisy rankings,
ordered new correct-vs-wrong arithmetic answers right 40-60% of the time, while the backbone's
own likelihood (the form below) ordered them right 77-87% of the time before any ranking. The
knowledge is there, in the language-model head, and a fresh scalar head does not find it from
200 rankings. So this reward is

    r(x, y) = w * sum_t [log p(y_t | x, y_<t) + H_t] + head(h_last)

where H_t is the entropy of the backbone's next-token distribution at t, so each term is the
token's log-likelihood above what the backbone expects of its own samples there (0 on average
for them). Why that and not the plain likelihood: PPO against the MEAN log-likelihood (which
orders correct-vs-wrong pairs best, 0.85) learnt to append a stock phrase ("Let me know if you
have more questions.") whose predictable tokens raise the mean and dilute a wrong number; the
correctness of its answers fell 0.59 -> 0.49 while the reward rose. The SUM penalises every
extra token, so it prefers bare answers to right ones (0.70). The centred sum gives predictable
filler about 0 per token, so appending it neither pays nor hides a mistake (a wrong answer
plus filler still loses to the right one 88-97% of the time, against 56% under the mean), and
it orders plain pairs right 77-80% of the time. y ends with the end-of-text token (the policy
wrote it too; a response that never ends pays for it, and an empty one for ending at once).

``w`` starts at 1 and the head at zero: before any ranking the model ranks as the backbone's
confidence does, and training moves ``w`` (with its own, larger step: Adam moves each weight
by about its learning rate per step, and one scalar must be able to change sign within an
epoch when people disagree with the backbone) and the head towards what people prefer. The
likelihood and the head come from ONE forward pass; logits are computed only at response
positions, so a 150k-word vocabulary does not cost a logit per prompt token.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from transformers import PretrainedConfig, PreTrainedModel

from rlhf_loop.reward.shared_prefix import PackedRankings

FORM = "likelihood"  # the ``form`` recorded in a saved version's metadata
HEAD_FILE = "likelihood_head.safetensors"
WEIGHT_LR = 0.1  # learning rate of the likelihood weight ``w`` (see the module docstring)


def excess_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) + H(p) for each row of ``logits`` [M, V]: how much more likely the token
    is than the distribution's own samples are on average (their expected log-probability is
    -H). Positive for a token likelier than typical, 0 in expectation under p itself."""
    logprobs = torch.log_softmax(logits.float(), -1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logprobs.gather(-1, targets[:, None]).squeeze(-1) + entropy


def with_end_token(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    end_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row with ``end_id`` written after its last real token (one column longer), that
    token attended and counted as response."""
    rows = torch.arange(len(input_ids), device=input_ids.device)
    at = last_real_positions(attention_mask) + 1

    def widened(tensor: torch.Tensor, padding: int, value: int) -> torch.Tensor:
        out = torch.cat([tensor, torch.full_like(tensor[:, :1], padding)], dim=1)
        out[rows, at] = value
        return out

    ids = widened(input_ids, end_id, end_id)  # the new column is padding where unused
    attention = widened(attention_mask, 0, 1)
    response = widened(response_mask.bool(), False, True)
    return ids, attention, response


def last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


class LikelihoodReward(torch.nn.Module):
    """A causal LM (or a PEFT wrapper of one), a zero-initialised scalar head, and ``w``.

    Returns an object with ``.logits`` of shape [N, 1], as a sequence-classification model
    does, so scoring code treats both forms alike.
    """

    def __init__(
        self, lm: PreTrainedModel, end_id: int, head_dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        self.lm, self.end_id = lm, end_id
        hidden = lm.config.get_text_config().hidden_size
        self.score = torch.nn.Linear(hidden, 1, bias=False, dtype=head_dtype)
        torch.nn.init.zeros_(self.score.weight)
        self.lm_weight = torch.nn.Parameter(torch.ones((), dtype=head_dtype))

    @property
    def config(self) -> PretrainedConfig:  # read by scoring code, as on a transformers model
        return self.lm.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        **_: torch.Tensor,
    ) -> SimpleNamespace:
        # step 1: the response ends with the end-of-text token, as the policy wrote it
        input_ids, attention_mask, response_mask = with_end_token(
            input_ids, attention_mask, response_mask, self.end_id
        )
        # step 2: one pass for the final hidden states; the LM's own logits only for the last
        # position (``logits_to_keep=1``), the rest come from the response positions below
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        # step 3: token t is predicted from position t-1; score only response tokens
        predicts = response_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
        rows, cols = predicts.nonzero(as_tuple=True)
        everyone = torch.arange(len(input_ids), device=input_ids.device)
        return self._reward(
            out.hidden_states[-1],
            input_ids,
            (rows, rows, cols, cols + 1),
            (everyone, last_real_positions(attention_mask)),
        )

    def forward_packed(self, packed: PackedRankings) -> SimpleNamespace:
        """The same rewards as ``forward`` on the unpacked rows, each ranking's common start
        read once (``shared_prefix``; the end tokens are packed in already)."""
        out = self.lm(**packed.model_inputs(), output_hidden_states=True, logits_to_keep=1)
        return self._reward(out.hidden_states[-1], packed.input_ids, packed.scored, packed.last)

    def _reward(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        scored: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        last: tuple[torch.Tensor, torch.Tensor],
    ) -> SimpleNamespace:
        """Steps 3-4 for ``scored`` = (response, row, column that predicts, column predicted)
        of each response token, and ``last`` = (row, column) of each response's last token."""
        response, rows, before, at = scored
        logits = self.lm.get_output_embeddings()(hidden[rows, before])
        excess = excess_logprob(logits, input_ids[rows, at])
        # step 4: summed per response: the backbone's confidence, weighted, plus the learnt head
        n = len(last[0])
        confidence = torch.zeros(n, device=hidden.device).index_add_(0, response, excess)
        head = self.score(hidden[last].to(self.score.weight.dtype)).squeeze(-1)
        return SimpleNamespace(logits=(self.lm_weight * confidence + head).unsqueeze(-1))

    def optimiser_groups(self, lr: float) -> list[dict]:
        """Parameter groups: ``w`` on its own learning rate, everything else on ``lr``."""
        rest = [p for n, p in self.named_parameters() if p.requires_grad and n != "lm_weight"]
        return [{"params": rest, "lr": lr}, {"params": [self.lm_weight], "lr": WEIGHT_LR}]

    def save_head(self, directory: Path) -> None:
        save_file(
            {
                "score.weight": self.score.weight.detach().cpu().contiguous(),
                "lm_weight": self.lm_weight.detach().cpu().reshape(()),
            },
            str(directory / HEAD_FILE),
        )

    def load_head(self, directory: Path) -> None:
        tensors = load_file(str(directory / HEAD_FILE))
        with torch.no_grad():
            self.score.weight.copy_(tensors["score.weight"])
            self.lm_weight.copy_(tensors["lm_weight"])
