"""The fuzz target of fuzz_convert.py driven by hypothesis, for a fixed time.

Hypothesis makes the choices (and shrinks a finding to a small reproducer); batches of
examples run until ``MPSLAYOUT_FUZZ_SECONDS`` (default 20) have passed. Every finding
becomes a regression test in tests/test_hostile.py.
"""

from __future__ import annotations

import os
import time

from fuzz_convert import HypothesisPicker, RandomPicker, check_one
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

SECONDS = float(os.environ.get("MPSLAYOUT_FUZZ_SECONDS", "20"))

BATCH = settings(
    max_examples=300,
    deadline=None,
    database=None,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


def test_fuzz_convert_and_permute(record_property) -> None:
    counts: dict[str, int] = {}

    @BATCH
    @given(st.data())
    def batch(data: st.DataObject) -> None:
        label = check_one(HypothesisPicker(data))
        counts[label] = counts.get(label, 0) + 1

    stop = time.monotonic() + SECONDS
    batches = 0
    while time.monotonic() < stop or batches == 0:
        batch()
        batches += 1
    total = sum(counts.values())
    record_property("fuzz_executions", total)
    print(f"hypothesis fuzz: {total} executions in {batches} batches: {counts}")
    assert counts.get("permute-ok", 0), counts
    assert counts.get("convert-ok", 0), counts


def test_fixed_seeds() -> None:
    """A few hundred fixed pseudo-random inputs: the same every run, quick to bisect."""
    for seed in range(400):
        check_one(RandomPicker(seed))
