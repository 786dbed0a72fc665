"""Benchmark suite: mpslayout against numpy, PyTorch, MLX and memcpy on real weight shapes.

Every case is a layout conversion an MPS exporter really performs (ResNet-50 and VGG-16
convolutions, VGG-16's Linear after flatten, the DCGAN Dense->Reshape, a depthwise
kernel, MPSImage slices), timed in float32 and fused to float16, with one thread and with
all threads, in two cold modes (:data:`MODES`): ``cold`` flushes every cache before each
run (code and data come from memory, as for an exporter's first layer), ``cold-data``
cycles through distinct copies of the data, together larger than the last-level cache,
while the code stays warm (as in the middle of an exporter's loop over layers). The
contenders of one case run interleaved in one process after a warm-up:

- ``mpslayout``: the public converter with ``out=`` preallocated.
- ``np.copyto``: ``np.copyto(preallocated, view)``, ``view`` the equivalent numpy view.
- ``np.ascontiguousarray``: ``np.ascontiguousarray(view)``, or ``view.astype(np.float16,
  order="C")`` for the casts (it allocates its result, as a user's code would).
- ``torch``: ``t.permute(...).contiguous()`` (casts: ``.to(torch.float16,
  memory_format=torch.contiguous_format)``), when torch is importable.
- ``mlx``: MLX's CPU, ``np.asarray(mx.contiguous(mx.array(x).transpose(...)))`` (casts:
  ``.astype(mx.float16)`` before ``mx.contiguous``), when mlx is importable.
- ``memcpy``: ``np.copyto`` of a contiguous uint8 buffer as large as the input: the ceiling.

Before timing, every contender's result is checked bit for bit against ``np.copyto``'s;
a mismatch raises :class:`BenchmarkError`. ``--processes N`` repeats the whole run in N
fresh processes and reports the spread of the paired ratios across them. Run it with
``mpslayout bench`` or ``python bench/run.py``; ``bench/README.md`` explains the output.

Modules: :mod:`.cases` (what is converted), :mod:`.contenders` (what runs, checked bit
for bit), :mod:`.timing` (flushes, cold modes, paired ratios), :mod:`.suite` (the whole
run, the tiny call, merging processes), :mod:`.machine`, :mod:`.report` (markdown),
:mod:`.plot` (PNG), :mod:`.cli`.
"""

from __future__ import annotations

from .cases import CASES, DTYPES, BenchmarkError, Case, select_cases
from .cli import add_arguments, build_parser, main, run_from_args
from .contenders import CEILING, REFERENCE, build_setup, check_case, make_input, verify
from .machine import machine_info
from .report import render_markdown
from .suite import (
    FULL_REPEATS,
    QUICK_REPEATS,
    _thread_list,
    merge_reports,
    run_benchmark,
    tiny_call,
)
from .timing import MODES, measure

__all__ = [
    "CASES",
    "CEILING",
    "DTYPES",
    "FULL_REPEATS",
    "MODES",
    "QUICK_REPEATS",
    "REFERENCE",
    "BenchmarkError",
    "Case",
    "_thread_list",
    "add_arguments",
    "build_parser",
    "build_setup",
    "check_case",
    "machine_info",
    "main",
    "make_input",
    "measure",
    "merge_reports",
    "render_markdown",
    "run_benchmark",
    "run_from_args",
    "select_cases",
    "tiny_call",
    "verify",
]
