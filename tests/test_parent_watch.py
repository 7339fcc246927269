"""Process identities for the worker's parent watch: exited, zombie and reused pids are gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_loop import parent_watch
from rlhf_loop.parent_watch import identity, is_running

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc only")


def _exited_child() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def test_this_process_is_running_and_an_exited_one_is_not() -> None:
    assert is_running(identity(os.getpid()))
    assert not is_running(f"{_exited_child()}:")


@needs_proc
def test_a_zombie_counts_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child_identity = identity(child.pid)
    assert is_running(child_identity)
    child.kill()
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
        assert not is_running(child_identity)
    finally:
        child.wait()


@needs_proc
def test_a_reused_pid_is_not_the_same_process() -> None:
    pid, _, started = identity(os.getpid()).partition(":")
    assert started  # Linux: the start time is part of the identity
    assert not is_running(f"{pid}:{int(started) - 1}")


def test_without_proc_the_pid_alone_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parent_watch, "_PROC", tmp_path / "no-proc")
    assert identity(os.getpid()) == f"{os.getpid()}:"
    assert is_running(f"{os.getpid()}:")
    assert not is_running(f"{_exited_child()}:")
