"""Exports of a policy version: the LoRA adapter as it is, or merged into a plain model.

Both are zip files of directories that load with the libraries alone: the adapter with
``PeftModel.from_pretrained(base, dir)``, the merged model with
``AutoModelForCausalLM.from_pretrained(dir)``; neither needs rlhf-loop.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from rlhf_loop.ppo.policy import merged_model


def zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory))
    return buffer.getvalue()


def adapter_zip(version_dir: str | Path) -> bytes:
    version_dir = Path(version_dir)
    if not version_dir.is_dir():
        raise FileNotFoundError(f"the policy files are missing at {version_dir}")
    return zip_directory(version_dir)


def merged_zip(base_path: str, version_dir: str | Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return zip_directory(merged_model(base_path, version_dir, Path(tmp)))
