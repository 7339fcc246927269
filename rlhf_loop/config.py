"""Settings: one TOML file with documented defaults, each overridable by an environment variable.

Why both: the file is what an operator edits and reviews; environment variables are what tests,
CI and a GPU box's launcher can set without touching the file. Precedence, lowest first:
the defaults below, then the TOML file, then ``RLHF_LOOP_<KEY>`` variables.

The file is ``rlhf_loop.toml`` in the working directory, or the path in ``RLHF_LOOP_CONFIG``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "RLHF_LOOP_"
CONFIG_ENV = "RLHF_LOOP_CONFIG"
DEFAULT_CONFIG_FILE = "rlhf_loop.toml"


class ConfigError(ValueError):
    """A setting has a value the loop cannot run with; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the loop. Defaults run the embedded demo on a laptop CPU."""

    # Where the SQLite file and model artefacts live; relative paths are resolved from the cwd.
    data_dir: str = "rlhf_data"
    # SQLite file; empty means <data_dir>/rlhf.db.
    db_path: str = ""
    # Policy model: "demo" (shipped built; other step counts built locally on first use) or any
    # Hugging Face causal-LM id or path.
    model: str = "demo"
    # Cache for the locally built demo model, shared by every data_dir on this machine.
    model_cache_dir: str = "~/.cache/rlhf-loop"
    # Optimiser steps of the demo model's pre-training. The default's build is shipped in the repo
    # (rlhf_loop/model/demo_shipped), so it starts at once; another value is built on first start.
    demo_pretrain_steps: int = 4000
    # "auto" picks CUDA when available, else CPU; or name a torch device ("cpu", "cuda:1").
    device: str = "auto"
    # Dtype of frozen weights: "auto" (bfloat16 on a GPU with bf16, else float32), "float32",
    # "bfloat16" or "float16". Trained weights (adapters, heads, a fully trained reward
    # backbone) and every loss stay float32.
    dtype: str = "auto"
    # Responses per ranking task (2..9: one digit key per response).
    k: int = 4
    # Sampling parameters recorded with every generation.
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 48
    # Prompts per generate() call; each yields k sequences.
    sample_batch_prompts: int = 8
    # Ranking tasks kept ready ahead of the annotators.
    queue_depth: int = 24
    # Annotators who rank each task (more than 1 lets agreement be measured).
    overlap: int = 1
    # "open": anyone enters a name to rank; "invite": only with a link an operator made.
    annotator_access: str = "open"
    # One item in this many is a gold item (known order) the annotator has not seen; 0 = none.
    gold_every: int = 10
    # A task served but not submitted goes back to the pool after this many seconds.
    assignment_timeout_s: int = 1800
    # Longest prompt accepted at import, in characters.
    max_prompt_chars: int = 20000
    # Seed the prompt table with generated demo prompts when it is empty.
    seed_demo_prompts: bool = True
    # Let the app start a background worker when none holds the lease.
    auto_start_worker: bool = True
    # Seconds after the last heartbeat at which a worker's lease counts as dead.
    lease_timeout_s: float = 30.0
    # Times a job is retried after its worker died mid-job before it is marked failed.
    job_max_attempts: int = 3

    # Reward model: backbone "policy" (the policy's own base model) or a Hugging Face id or path.
    reward_backbone: str = "policy"
    # LoRA rank on the reward backbone; 0 trains all weights (fine for small backbones).
    reward_lora_r: int = 0
    # Start the reward from the backbone's own mean log-likelihood of each response (a learnt
    # weight, plus the scalar head): a backbone that knows the answers then ranks right above
    # wrong before any ranking. Needs a causal LM with its LM head; others get the head alone.
    reward_likelihood_prior: bool = True
    reward_epochs: int = 4
    reward_lr: float = 3e-4
    # Rankings per optimiser step (each is K forward passes).
    reward_batch_rankings: int = 8
    # Tokens per prompt+response; longer prompts lose their start.
    reward_max_length: int = 256
    # Learn Davidson's tie parameter (else ties are ignored, as plain Bradley-Terry does).
    reward_learn_ties: bool = True
    # Prompt-aware utility (arXiv 2305.17608) from each prompt's label (open / closed).
    reward_prompt_aware: bool = False
    # Share of prompts whose rankings are held out for evaluation.
    reward_heldout_fraction: float = 0.15
    # Retrain automatically after this many new rankings; 0 = only when an operator asks.
    reward_retrain_every: int = 50
    # Incremental retraining, so a retrain's cost stays flat as rankings pile up: a version starts
    # from the newest reward model and trains on the rankings new since it plus a seeded sample of
    # reward_replay_rankings older ones (replay keeps it from forgetting them), and every
    # reward_full_retrain_every-th version retrains from the backbone on all rankings (1 = every
    # version in full), as does any version whose newest model has another backbone or reward
    # settings. A version retrains in full too while new + replay would be more than half of the
    # training rankings: with the defaults, until about 2,100 of them (2,500 with the held-out
    # share), so the small data of a first loop keeps today's full retrains, whose cost there is
    # about an incremental one's and which never drift.
    reward_full_retrain_every: int = 10
    reward_replay_rankings: int = 1000
    # Held-out rankings scored per version: when more are held out, a sample fixed by their ids.
    # 2,000 rankings bound the accuracy interval to about +-0.02; scoring all (7,500 at 50k
    # rankings) would cost more than an incremental retrain. 0 scores them all.
    reward_eval_max_rankings: int = 2000
    # Serve first the items the reward model is least sure about.
    active_selection: bool = True

    # PPO round: rollout batches ("steps") per round, prompts per batch, samples per prompt. A
    # batch is for the whole round: on N processes each rolls out its share (16 over 3: 6, 5, 5).
    ppo_steps: int = 8
    ppo_batch_prompts: int = 16
    ppo_samples_per_prompt: int = 2
    # Optimisation: passes over each rollout batch, minibatch size in sequences, learning rate.
    ppo_epochs: int = 2
    ppo_minibatch: int = 16
    ppo_lr: float = 1e-3
    ppo_lora_r: int = 8
    # Learning rate of the final norm, trained beside the adapter: its gain is the policy's
    # temperature, which no LoRA update can change behind a final norm (see ppo/policy.py).
    # 0 keeps the norm frozen (only the adapter trains).
    ppo_norm_lr: float = 3e-2
    # Clipping of the policy ratio and of the value change; weight of the value loss.
    ppo_clip: float = 0.2
    ppo_clip_value: float = 0.2
    ppo_vf_coef: float = 0.1
    # GAE discount and trace decay.
    ppo_gamma: float = 1.0
    ppo_lambda: float = 0.95
    # Per-token KL penalty coefficient; with ppo_kl_target > 0 it adapts toward that KL.
    ppo_kl_coef: float = 0.05
    ppo_kl_target: float = 0.0
    # Subtracted from the score of a response that hits the length limit without ending.
    ppo_missing_eos_penalty: float = 1.0
    # 0: the reference is the frozen base; else the decay of an EMA of the policy's adapter.
    ppo_ema_reference: float = 0.0
    # PPO-ptx (InstructGPT): weight of the supervised loss on demonstrations (or on the lines of
    # ppo_ptx_file, a pretraining text file) added to every PPO update; 0 = off.
    ppo_ptx_coef: float = 0.0
    ppo_ptx_file: str = ""
    ppo_ptx_batch: int = 8
    # Held-out prompts for each round's before/after evaluation.
    ppo_eval_prompts: int = 24
    # Start a PPO round automatically after each reward-model retrain (only when the reward
    # model's held-out accuracy interval lies above chance, and no candidate awaits a verdict).
    ppo_after_reward: bool = True
    # A round stops once a rollout's KL to the reference passes this (nats per response), keeping
    # the weights from before; 0 = no budget.
    ppo_kl_budget: float = 6.0

    # SFT round (InstructGPT's first stage): the live policy's adapter trained on the live
    # demonstrations whose prompt is not held out, for sft_epochs passes of sft_batch
    # demonstrations at sft_lr (the final norm too, when ppo_norm_lr > 0).
    sft_epochs: int = 3
    sft_batch: int = 8
    sft_lr: float = 1e-3
    # Start an SFT round after this many new demonstrations since the last SFT version;
    # 0 = only when an operator asks.
    sft_retrain_every: int = 20

    # Reward functions (rlhf_loop.verifiers): "module:attribute=weight, ..." each
    # fn(prompt, response) -> float | None, added to the reward model's score in PPO. Built in:
    # rlhf_loop.verifiers:arithmetic, :format_check (verifier_format_pattern), :length_budget
    # (verifier_max_words). reward_model_weight = 0 runs rounds on the functions alone (RLVR).
    reward_functions: str = ""
    reward_model_weight: float = 1.0
    verifier_format_pattern: str = ""
    verifier_max_words: int = 0
    # False: prompts a reward function applies to are kept out of the human ranking queue, so
    # people rank what only people can judge.
    verified_prompts_to_humans: bool = True

    # Judging policies by people. "human": a finished PPO round is a candidate, shown only in
    # blind comparison items against the live version, made live when people prefer it;
    # "immediate": it goes live at once.
    policy_adoption: str = "human"
    # Share of new items that mix two versions' responses, blind, once a second version exists.
    eval_share: float = 0.2
    # Cross-version pairs after which an undecided candidate is left to the operator; the
    # verdict's sequential bar is lowest here (rlhf_loop.arena.sequential).
    eval_max_comparisons: int = 400
    # Responses in a blind item (half from each version); 0: k. More responses give more
    # cross-version pairs per ranking, so a verdict needs fewer blind rankings.
    eval_k: int = 0
    # Under "immediate": roll a live version back when people prefer its parent.
    auto_rollback: bool = True

    # Demonstrations (answers written on the Rank page). True: a written answer also counts as a
    # ranking of its item in which it beats all K responses (the K keep the annotator's order of
    # them, or tie below it); the page says which. Stored with each answer as it was when written.
    demonstrations_count_as_rankings: bool = True

    @property
    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def resolved_db_path(self) -> Path:
        if self.db_path:
            return Path(self.db_path).expanduser().resolve()
        return self.resolved_data_dir / "rlhf.db"

    @property
    def runs_dir(self) -> Path:
        return self.resolved_data_dir / "runs"

    @property
    def resolved_model_cache_dir(self) -> Path:
        return Path(self.model_cache_dir).expanduser().resolve()

    def validate(self) -> Settings:
        checks = [
            (2 <= self.k <= 9, "k must be between 2 and 9"),
            (self.temperature > 0, "temperature must be > 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (
                self.dtype in ("auto", "float32", "bfloat16", "float16"),
                "dtype must be 'auto', 'float32', 'bfloat16' or 'float16'",
            ),
            (self.sample_batch_prompts >= 1, "sample_batch_prompts must be >= 1"),
            (self.queue_depth >= 1, "queue_depth must be >= 1"),
            (self.overlap >= 1, "overlap must be >= 1"),
            (self.gold_every >= 0, "gold_every must be >= 0 (0 serves no gold items)"),
            (
                self.annotator_access in ("open", "invite"),
                "annotator_access must be 'open' or 'invite'",
            ),
            (self.assignment_timeout_s >= 1, "assignment_timeout_s must be >= 1"),
            (self.max_prompt_chars >= 1, "max_prompt_chars must be >= 1"),
            (self.demo_pretrain_steps >= 0, "demo_pretrain_steps must be >= 0"),
            (self.lease_timeout_s > 0, "lease_timeout_s must be > 0"),
            (self.job_max_attempts >= 1, "job_max_attempts must be >= 1"),
            (self.reward_lora_r >= 0, "reward_lora_r must be >= 0 (0 trains all weights)"),
            (self.reward_epochs >= 1, "reward_epochs must be >= 1"),
            (self.reward_lr > 0, "reward_lr must be > 0"),
            (self.reward_batch_rankings >= 1, "reward_batch_rankings must be >= 1"),
            (self.reward_max_length >= 8, "reward_max_length must be >= 8"),
            (0 <= self.reward_heldout_fraction < 1, "reward_heldout_fraction must be in [0, 1)"),
            (self.reward_retrain_every >= 0, "reward_retrain_every must be >= 0"),
            (
                self.reward_full_retrain_every >= 1,
                "reward_full_retrain_every must be >= 1 (1 retrains every version in full)",
            ),
            (self.reward_replay_rankings >= 0, "reward_replay_rankings must be >= 0"),
            (
                self.reward_eval_max_rankings >= 0,
                "reward_eval_max_rankings must be >= 0 (0 scores every held-out ranking)",
            ),
            (self.ppo_steps >= 1, "ppo_steps must be >= 1"),
            (self.ppo_batch_prompts >= 1, "ppo_batch_prompts must be >= 1"),
            (self.ppo_samples_per_prompt >= 1, "ppo_samples_per_prompt must be >= 1"),
            (self.ppo_epochs >= 1, "ppo_epochs must be >= 1"),
            (self.ppo_minibatch >= 1, "ppo_minibatch must be >= 1"),
            (self.ppo_lr > 0, "ppo_lr must be > 0"),
            (self.ppo_lora_r >= 1, "ppo_lora_r must be >= 1"),
            (self.ppo_norm_lr >= 0, "ppo_norm_lr must be >= 0 (0 keeps the final norm frozen)"),
            (self.ppo_clip > 0 and self.ppo_clip_value > 0, "PPO clip ranges must be > 0"),
            (
                0 < self.ppo_gamma <= 1 and 0 <= self.ppo_lambda <= 1,
                "ppo_gamma, ppo_lambda in (0, 1]",
            ),
            (self.ppo_kl_coef >= 0 and self.ppo_kl_target >= 0, "KL settings must be >= 0"),
            (0 <= self.ppo_ema_reference < 1, "ppo_ema_reference must be in [0, 1)"),
            (self.ppo_ptx_coef >= 0, "ppo_ptx_coef must be >= 0 (0 = off)"),
            (self.ppo_ptx_batch >= 1, "ppo_ptx_batch must be >= 1"),
            (self.ppo_eval_prompts >= 1, "ppo_eval_prompts must be >= 1"),
            (self.ppo_kl_budget >= 0, "ppo_kl_budget must be >= 0 (0 = no budget)"),
            (self.sft_epochs >= 1, "sft_epochs must be >= 1"),
            (self.sft_batch >= 1, "sft_batch must be >= 1"),
            (self.sft_lr > 0, "sft_lr must be > 0"),
            (self.sft_retrain_every >= 0, "sft_retrain_every must be >= 0 (0 = never)"),
            (
                self.policy_adoption in ("human", "immediate"),
                "policy_adoption must be 'human' or 'immediate'",
            ),
            (0 <= self.eval_share <= 1, "eval_share must be in [0, 1]"),
            (self.eval_max_comparisons >= 1, "eval_max_comparisons must be >= 1"),
            (
                self.eval_k == 0 or 2 <= self.eval_k <= 9,
                "eval_k must be 0 (same as k) or between 2 and 9",
            ),
            (self.reward_model_weight >= 0, "reward_model_weight must be >= 0 (0: functions only)"),
            (self.verifier_max_words >= 0, "verifier_max_words must be >= 0"),
            (bool(self.model.strip()), "model must name 'demo', a Hugging Face id or a path"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes).validate()


def _coerce(name: str, raw: Any, kind: type) -> Any:
    """Turn a TOML or environment value into the field's type, naming the setting on failure."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int and isinstance(raw, float):
            raise ValueError(raw)
        return kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: cannot read {raw!r} as {kind.__name__}") from None


def load_settings(
    config_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Defaults, then the TOML file (if present), then ``RLHF_LOOP_*`` variables."""
    environ = os.environ if environ is None else environ
    types = {f.name: type(f.default) for f in fields(Settings)}
    values: dict[str, Any] = {}

    explicit = config_file or environ.get(CONFIG_ENV)
    path = Path(explicit or DEFAULT_CONFIG_FILE).expanduser()
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
        unknown = sorted(set(table) - set(types))
        if unknown:
            raise ConfigError(f"{path}: unknown settings {', '.join(unknown)}")
        values.update({k: _coerce(k, v, types[k]) for k, v in table.items()})
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")

    for name, kind in types.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw, kind)
    return Settings(**values).validate()
