"""Model artefacts on disk: a version directory appears complete or not at all.

Written into a temporary directory beside its final name, then renamed: a crash mid-write
leaves only a hidden temporary directory, which nothing registers or loads. The next write of
the same name removes such leftovers (one worker writes at a time: it holds the lease), so a
disk that was full or read-only during a save does not keep the half-written copy forever.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_directory(final_dir: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a fresh temporary directory, then move it to ``final_dir``."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    for leftover in final_dir.parent.glob(f".{final_dir.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}-", dir=final_dir.parent))
    try:
        write(tmp)
        if final_dir.exists():  # an unregistered leftover of a crash after the rename
            shutil.rmtree(final_dir)
        os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final_dir
