"""Memory and CPU-contention probes shared by the benchmarks (Linux /proc; stdlib only, so the
TRL 1.12 child in its own virtual environment can import it too)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import time

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


def wait_for_quiet(max_wait_s: float, threshold: float, probe_s: float = 2.0) -> float:
    """Wait (up to max_wait_s) until the machine is at least 1 - threshold idle over a probe;
    returns the seconds waited. Other sessions share this machine."""
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    while True:
        busy0 = machine_busy_s()
        time.sleep(probe_s)
        share = (machine_busy_s() - busy0) / (probe_s * cores)
        waited = time.perf_counter() - started
        if share < threshold or waited >= max_wait_s:
            return waited


class Window:
    """Wall time, process CPU time and peak RSS growth of one block of work, and the CPU other
    processes took meanwhile (the machine is shared: contention slows either arm). A benchmark
    adds its own probes in ``start`` (before the clock starts) and ``stop`` (after it stops)."""

    def __enter__(self) -> Window:
        gc.collect()
        trim_heap()
        self.rss_before = rss_mib()
        self.reset_ok = reset_peak_rss()
        self.start()
        self.busy0 = machine_busy_s()
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self.others = max(0.0, machine_busy_s() - self.busy0 - self.cpu)
        self.stop()
        self.peak = peak_rss_mib() if self.reset_ok else math.nan

    def start(self) -> None:
        """Extra probes read before the clock starts."""

    def stop(self) -> None:
        """Extra probes read after the clock stops."""

    def record(self) -> dict[str, float]:
        return {
            "train_wall_s": self.wall,
            "train_cpu_s": self.cpu,
            # share of the machine's CPU capacity other processes used during the timing
            "contention": self.others / (self.wall * (os.cpu_count() or 1)),
            "rss_before_train_mib": self.rss_before,
            "peak_rss_during_train_mib": self.peak,
            "rss_delta_train_mib": self.peak - self.rss_before,
        }
