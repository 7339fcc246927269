"""rlhf-loop: rank policy samples in a browser, train a reward model and the policy on them."""
