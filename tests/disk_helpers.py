"""Real small filesystems for fault tests: a tmpfs of its own that a test can fill up or remount
read-only, without touching the machine's other disks."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """``path`` as a tmpfs of ``size`` (e.g. "2m"), unmounted afterwards. Needs root with
    CAP_SYS_ADMIN: skipped without it, failed on CI, which must run these tests."""
    path.mkdir(parents=True, exist_ok=True)
    if not mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        why = "mounting a tmpfs needs root with CAP_SYS_ADMIN"
        if os.environ.get("CI"):  # CI has it: there a failed mount is a broken job, not a skip
            pytest.fail(f"{why}, and CI must run this test")
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(path: Path, leave_bytes: int = 0) -> Path:
    """A ballast file at ``path`` that takes all the free space of its filesystem but
    ``leave_bytes``; returns it. Deleting it gives the space back."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize - leave_bytes
        chunk = b"\0" * 65536
        while free > 0:
            try:
                free -= os.write(fd, chunk[: min(free, len(chunk))])
            except OSError:  # full already: the filesystem keeps some blocks for itself
                break
    finally:
        os.close(fd)
    return path
