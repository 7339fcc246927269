"""Judging policy versions by blind human comparison: version strengths from arena rankings, the
reward model's held-out accuracy as evidence with its interval, and cheap over-optimisation signals.
Pure statistics over plain data; the store, jobs and pages call them."""
