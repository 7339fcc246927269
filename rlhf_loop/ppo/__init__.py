"""PPO of the LoRA policy against a frozen reward model (math in ``rlhf_loop.ppo.math``)."""
