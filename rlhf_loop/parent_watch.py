"""Is the app that started this worker still running? A process identity that survives pid reuse.

Why: the app starts its worker in a session of its own, so that Ctrl-C on ``streamlit run`` does
not interrupt it in the middle of a save; nothing then ends the worker when the app is gone. So
the app hands the worker its identity (``PARENT_ENV``) and the worker stops once that process
has exited. A pid alone is not an identity: once the app has exited, the kernel may give its
number to an unrelated process. On Linux the identity is the pid and the process's start time
from ``/proc/<pid>/stat``, and a zombie (exited, not yet reaped by its parent) counts as gone.
Without ``/proc`` (macOS) only the pid is checked, with signal 0. POSIX only, like the app:
on Windows ``os.kill(pid, 0)`` would end the process instead.
"""

from __future__ import annotations

import os
from pathlib import Path

PARENT_ENV = "RLHF_LOOP_PARENT_PROCESS"
_PROC = Path("/proc")


def identity(pid: int) -> str:
    """``"<pid>:<start time in clock ticks after boot>"``; the start time is empty without /proc."""
    stat = _stat(pid)
    return f"{pid}:{stat[1] if stat else ''}"


def is_running(process: str) -> bool:
    """Whether the process ``identity`` named is still running (not exited, not replaced)."""
    pid_text, _, started = process.partition(":")
    pid = int(pid_text)
    if not (_PROC / "self" / "stat").exists():
        return _exists(pid)
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and stat[1] == started


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc; None when there is no such process (or no
    /proc)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (name) state ppid ...": the name may hold spaces and parentheses, so split after the
    # last ")"; the state is field 3 of proc(5), the start time field 22.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    return True
