"""What several PPO tests read: the reference's logits over a padded batch, the plain path that
``ppo.packing`` is held to."""

from __future__ import annotations

import torch

from rlhf_loop.ppo.policy import Policy, forward, reference_weights


@torch.no_grad()
def reference_logits(
    policy: Policy, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Logits of the reference at every position of query+response."""
    with reference_weights(policy):
        return forward(policy, input_ids, attention_mask, with_values=False)[0]
