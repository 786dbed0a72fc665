"""The fuzz target of fuzz_convert.py driven by hypothesis, for a fixed time.

Hypothesis makes the choices (and shrinks a finding to a small reproducer); batches of
examples run until ``MPSLAYOUT_FUZZ_SECONDS`` (default 20) have passed. Every finding
becomes a regression test in tests/test_hostile.py.
"""

from __future__ import annotations

import os

from fuzz_convert import RandomPicker, check_one, hypothesis_run

SECONDS = float(os.environ.get("MPSLAYOUT_FUZZ_SECONDS", "20"))
MAX_EXAMPLES = 300  # per batch


def test_fuzz_convert_and_permute(record_property) -> None:
    counts, batches = hypothesis_run(check_one, SECONDS, MAX_EXAMPLES)
    total = sum(counts.values())
    record_property("fuzz_executions", total)
    print(f"hypothesis fuzz: {total} executions in {batches} batches: {counts}")
    assert counts.get("permute-ok", 0), counts
    assert counts.get("convert-ok", 0), counts


def test_fixed_seeds() -> None:
    """A few hundred fixed pseudo-random inputs: the same every run, quick to bisect."""
    for seed in range(400):
        check_one(RandomPicker(seed))
