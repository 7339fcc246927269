"""Memory and CPU-contention probes shared by the benchmarks (Linux /proc; stdlib only, so the
TRL 1.12 child in its own virtual environment can import it too)."""

from __future__ import annotations

import contextlib
import ctypes
import os

PAGE = os.sysconf("SC_PAGE_SIZE")


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS before training counts live memory,
    not what the warm-up freed but malloc kept; the same for both arms."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def reset_peak_rss() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM, the peak RSS, to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak RSS since the last ``reset_peak_rss`` (or since start)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
