"""Named points where a fault test kills this process, to land a crash exactly where it matters.

A random SIGKILL from outside rarely falls between two statements; with ``RLHF_LOOP_FAULT`` set
to a point's name the process SIGKILLs itself on reaching it (no cleanup, no flush: what a power
cut leaves). Unset, as always outside tests, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "RLHF_LOOP_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
