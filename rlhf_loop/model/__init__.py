"""Policy models: the locally built demo model and the loader shared by every causal LM."""
