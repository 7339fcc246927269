"""Supervised fine-tuning on demonstrations: InstructGPT's first stage, and PPO-ptx's loss."""
