"""The demo model shipped in the repository, so a fresh clone's first start builds nothing.

Why ship it: a demo model that knows its corpus needs thousands of pre-training steps (minutes on
a small CPU), and a newcomer's first start must be quick. ``python -m rlhf_loop build-demo``
writes it from the default spec by the same seeded code path as the cache
(``ensure_demo_model``), stored as float16 (half the bytes; it scored the same as float32, and the
loader's dtype policy reads it back as float32 on a CPU). ``SHA256SUMS`` records every file's hash
in ``sha256sum -c`` format, so a changed or corrupted copy is caught. The directory is used only
when its ``demo_spec.json`` carries the configured spec's key; any other spec is built into the
cache as before.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from rlhf_loop.config import Settings
from rlhf_loop.model.demo_build import (
    SPEC_FILE,
    DemoSpec,
    ProgressFn,
    ensure_demo_model,
    spec_from_settings,
)

SHIPPED_DIR = Path(__file__).with_name("demo_shipped")
HASHES_FILE = "SHA256SUMS"


def shipped_demo_model(spec: DemoSpec, shipped_dir: Path = SHIPPED_DIR) -> Path | None:
    """``shipped_dir`` when it holds the build of exactly ``spec``, else None (build instead)."""
    try:
        record = json.loads((shipped_dir / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return shipped_dir if record.get("key") == spec.key() else None


def file_hashes(model_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in ``model_dir`` except the hashes file itself, by name."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(model_dir.iterdir())
        if path.is_file() and path.name != HASHES_FILE
    }


def recorded_hashes(model_dir: Path) -> dict[str, str]:
    """The hashes written with the shipped files, by name."""
    lines = (model_dir / HASHES_FILE).read_text(encoding="utf-8").splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines if line)}


def write_shipped_demo(
    spec: DemoSpec,
    cache_dir: Path,
    out_dir: Path = SHIPPED_DIR,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Build (or reuse the cached build of) ``spec`` and write it, float16, with its hashes.

    Written to a temp dir beside ``out_dir`` and swapped in at the end, so a failed run leaves the
    previous shipped model whole.
    """
    built = ensure_demo_model(cache_dir, spec, on_progress)
    model = AutoModelForCausalLM.from_pretrained(built, dtype=torch.float32)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.to(torch.float16).save_pretrained(tmp)
        for source in sorted(built.iterdir()):  # tokenizer files and the spec record
            if source.is_file() and not (tmp / source.name).exists():
                shutil.copy2(source, tmp / source.name)
        hashes = "".join(f"{digest}  {name}\n" for name, digest in file_hashes(tmp).items())
        (tmp / HASHES_FILE).write_text(hashes, encoding="utf-8")
        for path in tmp.iterdir():  # safetensors writes 0600; git and other users need to read
            path.chmod(0o644)
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def build_demo_command(settings: Settings) -> int:
    """``python -m rlhf_loop build-demo``: rewrite the shipped model from the default spec.

    The default spec, not the configured one: the shipped model is what a fresh clone with no
    settings uses. ``settings`` gives only the cache, so a cached build of that spec is reused.
    """
    spec = spec_from_settings(Settings())
    started = time.monotonic()

    def report(stage: str, fraction: float) -> None:
        print(f"{time.monotonic() - started:7.1f} s  {stage} {fraction:.0%}", file=sys.stderr)

    out = write_shipped_demo(spec, settings.resolved_model_cache_dir, on_progress=report)
    for name in file_hashes(out):
        print(f"{(out / name).stat().st_size:>10} bytes  {out / name}")
    print(f"spec {spec.key()} ({spec.pretrain_steps} steps) written to {out} with {HASHES_FILE}")
    return 0
