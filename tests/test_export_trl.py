"""The pairs export trains TRL's RewardTrainer as it is: the file the Data page's download
button gives, loaded with ``datasets.load_dataset("json")``, no conversion in between.

Why a real TRL run rather than a column check: TRL's column names and its handling of an
explicit prompt change between releases, and the export's promise is "feeds RewardTrainer".
"""

from __future__ import annotations

import math
from pathlib import Path

import datasets
import trl
from store_helpers import fresh_db, oracle_rankings

from rlhf_loop.export import export_jsonl
from rlhf_loop.reward.model import load_backbone

STEPS = 3


def test_exported_pairs_train_trl_reward_trainer(tmp_path: Path, demo_model_path: Path) -> None:
    db = fresh_db(tmp_path)
    oracle_rankings(db, 8)
    pairs_file = tmp_path / "pairs.jsonl"
    with pairs_file.open("w", encoding="utf-8") as out:
        export_jsonl(db, "pairs", out)
    dataset = datasets.load_dataset("json", data_files=str(pairs_file), split="train")
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert len(dataset) >= 2 * STEPS  # enough pairs for every step's batch

    model, tokenizer = load_backbone(str(demo_model_path), "cpu")
    config = trl.RewardConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL's default; the CPU trains in float32
        activation_checkpointing=False,  # TRL's default recomputes activations: slower here
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = trl.RewardTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    # What TRL trains on: the raw prompt and the response joined as they are, then EOS (the
    # export's docstring says so; the app's own reward model reads the templated prompt).
    first = dataset[0]
    chosen_ids = trainer.train_dataset[0]["chosen_ids"]
    assert tokenizer.decode(chosen_ids) == first["prompt"] + first["chosen"] + tokenizer.eos_token

    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == STEPS
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
