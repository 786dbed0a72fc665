"""Fuzz target over ``mpslayout.permute`` and ``mpslayout.convert``.

Each input decodes into one call: a random shape (0-6 axes, empty axes included), a random
memory layout made with ``as_strided`` inside a real buffer (steps, negative and zero
strides, strides that are not multiples of the element size, unaligned data), a random
dtype (every numeric one, byte-swapped ones, and ones that must be refused), random axes
or layout strings (blocked, with block sizes 0-17; sometimes broken: repeated, missing or
lowercase letters, junk), ``dtype=`` casts, ``out=`` (fresh, wrong, read-only, or the
input's own memory) and ``threads=``.

The oracle: the call either returns exactly what numpy / the slow twins in
``mpslayout.slow`` give (dtype, shape, C order and every bit), or raises ValueError or
TypeError, in which case ``out`` is left untouched and the slow twin must refuse too when
the call was otherwise sound. Anything else (another exception, a wrong bit, a crash)
is a finding.

Run by hand with atheris (coverage-guided; ``pip install atheris``)::

    python tests/fuzz/fuzz_convert.py -max_total_time=600 [corpus_dir]

or through hypothesis (``tests/fuzz/test_fuzz_convert.py``), or as a plain random run::

    python tests/fuzz/fuzz_convert.py --random 60     # seconds
"""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Any, Callable

import numpy as np

import mpslayout
from mpslayout import slow

try:
    import ml_dtypes

    BF16: Any = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - optional dependency
    BF16 = None


class Picker:
    """Source of choices: atheris bytes, hypothesis draws or a seeded PRNG."""

    def int(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def choice(self, seq: Any) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def bool(self, p_true: int = 50) -> bool:
        return self.int(0, 99) < p_true


class RandomPicker(Picker):
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.r.randint(lo, hi)


class BytesPicker(Picker):
    """atheris.FuzzedDataProvider: runs out into the lowest choices, like libFuzzer wants."""

    def __init__(self, fdp: Any) -> None:
        self.fdp = fdp

    def int(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)


class HypothesisPicker(Picker):
    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


U = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
GOOD = [np.dtype(t) for t in ("u1", "i1", "b1", "u2", "i2", "f2", "u4", "i4", "f4")]
GOOD += [np.dtype(t) for t in ("u8", "i8", "f8", "c8", ">f4", ">f2", ">i8", ">f8", ">u2")]
GOOD += [BF16] if BF16 is not None else []
BAD = [np.dtype(t) for t in ("c16", "O", "U1", "S3", "V3", "V2", "M8[s]", "f2,f2", "g")]
CASTS = {
    "float32": [np.float16, *([BF16] if BF16 is not None else [])],
    "float16": [np.float32],
    "float64": [np.float32],
    "bfloat16": [np.float32],
}
DIMS = [0, 1, 1, 2, 2, 3, 3, 4, 5, 7, 8, 9, 16, 17]
LETTERS = "NCHWDXYZ"
BLOCKS = [1, 2, 3, 4, 4, 8, 16, 17]
THREADS: list[Any] = [None, None, None, 1, 2, 3, 8]
BAD_THREADS: list[Any] = [0, -1, "2", True, 2.0, 2**31]
BUDGET = 768  # elements: the slow twins loop in Python
BIG_BUDGET = 1 << 19  # now and then a permute big enough for the thread pool (numpy oracle)
BIG_DIMS = [1, 2, 3, 8, 17, 64, 100, 257, 1024]


class Finding(AssertionError):
    """A bug: wrong result, wrong exception type, or a refusal of a sound call."""


def _shape(p: Picker, ndim: int, budget: int = BUDGET) -> list[int]:
    dims = DIMS if budget <= BUDGET else BIG_DIMS
    shape = [p.choice(dims) for _ in range(ndim)]
    while math.prod(shape) > budget:
        i = int(np.argmax(shape))
        shape[i] //= 2
    return shape


def _array(p: Picker, shape: list[int], dt: np.dtype) -> np.ndarray:
    """Random bits of dtype ``dt`` in a random strided view of a real buffer."""
    rng = np.random.default_rng(p.int(0, 2**32 - 1))
    e = dt.itemsize
    if dt.hasobject or dt.kind in "USV" or e not in (1, 2, 4, 8):
        return np.zeros(shape, dt)
    form = p.int(0, 9)
    if form == 0:  # a plain fresh array
        raw = rng.integers(0, 256, math.prod(shape) * e, dtype=np.uint8)
        return raw.view(dt).reshape(shape)
    strides: list[int] = []
    odd = p.bool(15)  # byte strides that are not multiples of the element size
    for _ in shape:
        step = p.choice([1, 1, 2, 3, -1, -2, 0, 5])
        s = step * e + (p.int(-1, 1) if odd and step else 0)
        if p.bool(10):
            s = p.choice([1, -1]) * 97 * e + e  # big jumps
        strides.append(s)
    lo = hi = 0  # byte range the view reaches, relative to its first element
    if all(shape):
        for n, s in zip(shape, strides):
            if s < 0:
                lo += (n - 1) * s
            else:
                hi += (n - 1) * s
    offset = p.int(0, e - 1) if p.bool(20) else 0  # unaligned start
    raw = rng.integers(0, 256, hi - lo + offset + 2 * e, dtype=np.uint8)
    start = offset - lo  # byte of the view's first element
    base = raw[start : start + (len(raw) - start) // e * e].view(dt)
    view = np.lib.stride_tricks.as_strided(base, shape=shape, strides=strides, writeable=False)
    if p.bool(15):
        view = view.copy()
    return view


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.itemsize in U and a.dtype.kind not in "b":
        return bool(np.array_equal(a.view(U[a.dtype.itemsize]), b.view(U[b.dtype.itemsize])))
    return a.tobytes() == b.tobytes()


def _dtype_arg(p: Picker, dt: np.dtype) -> Any:
    if p.bool(70):
        return None
    options = list(CASTS.get(dt.name, []))
    if dt.byteorder == ">" and dt.newbyteorder("=").name in CASTS:
        options += CASTS[dt.newbyteorder("=").name]
    junk = [np.float64, np.int8, "float16", ">f2", object, "nonsense", dt]
    if options and p.bool(75):
        return p.choice(options)
    return p.choice(junk)


def _out(p: Picker, x: np.ndarray, want: np.ndarray | None) -> tuple[Any, bool]:
    """(out argument, whether it is a sound one)."""
    if want is None or p.bool(75):
        return None, True
    kind = p.int(0, 6)
    if kind <= 2:
        return np.empty_like(want), True
    if kind == 3:  # read-only
        o = np.empty_like(want)
        o.setflags(write=False)
        return o, False
    if kind == 4 and want.ndim:  # non-contiguous
        big = np.empty((*want.shape[:-1], want.shape[-1] * 2), want.dtype)
        return big[..., ::2], want.shape[-1] <= 1 and big[..., ::2].flags.c_contiguous
    if kind == 5:  # wrong dtype
        other = np.float64 if want.dtype != np.float64 else np.float32
        return np.empty(want.shape, other), False
    # the input's own memory, if it is big enough
    if x.flags.writeable and x.flags.c_contiguous and x.nbytes >= want.nbytes > 0:
        flat = x.reshape(-1).view(np.uint8)[: want.nbytes]
        return flat.view(want.dtype).reshape(want.shape), False
    return np.empty_like(want), True


def _axes(p: Picker, ndim: int) -> tuple[Any, bool]:
    axes: list[Any] = list(range(ndim))
    random.Random(p.int(0, 2**31)).shuffle(axes)
    sound = True
    r = p.int(0, 19)
    if r == 0 and ndim:
        axes[p.int(0, ndim - 1)] = axes[0] if ndim > 1 else 1  # repeat or out of range
        sound = ndim > 1 and len(set(axes)) == ndim
    elif r == 1:
        axes.append(0)
        sound = False
    elif r == 2 and ndim:
        axes.pop()
        sound = False
    elif r == 3 and ndim:
        axes = [a - ndim for a in axes]  # negative, valid
    elif r == 4 and ndim:
        axes[0] = ndim + p.int(0, 3)
        sound = False
    elif r == 5:
        axes = [np.int64(a) for a in axes]
    elif r == 6 and ndim:
        axes[0] = float(axes[0])
        sound = False
    return (tuple(axes) if p.bool(80) else axes), sound


def _layouts(p: Picker, ndim: int) -> tuple[str, str, dict[str, int], dict[str, int], bool]:
    """(src, dst, logical sizes, source blocks, sound) for ``ndim`` lettered axes."""
    letters = list(LETTERS[: max(ndim, 1)])
    random.Random(p.int(0, 2**31)).shuffle(letters)
    src_letters = "".join(letters)
    random.Random(p.int(0, 2**31)).shuffle(letters)
    dst_letters = "".join(letters)
    s_blocks: dict[str, int] = {}
    d_blocks: dict[str, int] = {}
    for blocks in (s_blocks, d_blocks):
        for _ in range(p.choice([0, 0, 1, 1, 2])):
            blocks[p.choice(src_letters)] = p.choice(BLOCKS) if p.bool(97) else 0
    sound = all(b > 0 for b in (*s_blocks.values(), *d_blocks.values()))
    src = src_letters + "".join(f"{b}{c.lower()}" for c, b in s_blocks.items())
    dst = dst_letters + "".join(f"{b}{c.lower()}" for c, b in d_blocks.items())
    r = p.int(0, 24)
    if r == 0:
        dst = dst.lower()
        sound = False
    elif r == 1 and len(dst_letters) > 1:
        dst = dst_letters[0] * 2 + dst[2:]
        sound = False
    elif r == 2 and len(dst_letters) > 1:
        dst = dst[1:]
        sound = False
    elif r == 3:
        dst = p.choice(["", "#", "N C", "NC\n", "4c", "NCHW0c", "NCHWc", "NCHW4C", "\uff2e\uff23"])
        sound = False
    elif r == 4:
        src = src + "Q"
        sound = False
    sizes = {c: p.choice(DIMS) for c in src_letters}
    return src, dst, sizes, s_blocks, sound


def _physical(letters: str, blocks: dict[str, int], sizes: dict[str, int]) -> list[int]:
    shape = [
        -(-sizes.get(c, 1) // blocks[c]) if blocks.get(c) else sizes.get(c, 1) for c in letters
    ]
    return shape + [b for b in blocks.values()]


def _dtype_sound(dt: np.dtype, dtype: Any) -> bool:
    """Whether dtype= asks for something supported: nothing, the same dtype, or a cast."""
    if dtype is None:
        return True
    try:
        t = np.dtype(dtype)
    except TypeError:
        return False
    casts = [np.dtype(c) for c in CASTS.get(dt.newbyteorder("=").name, [])]
    return t == dt or (t.isnative and t in casts)


def _known(x: np.ndarray, dtype: Any, threads: Any) -> bool:
    """Refusals of sound calls that are known bugs, with a strict-xfail regression test in
    tests/test_hostile.py, so that fuzzing goes on past them."""
    if type(threads) is int and threads > 1024:  # refused by design: engine.MAX_THREADS
        return True
    return False


def _padded_size(dst: str, sizes: dict[str, int]) -> int:
    """Elements of the converted array, blocks rounded up (0 if dst does not parse)."""
    try:
        letters, blocks = slow._parse_layout(dst)
    except ValueError:
        return 0
    b = dict(blocks)
    return math.prod(
        -(-sizes.get(c, 1) // b[c]) * b[c] if c in b else sizes.get(c, 1) for c in letters
    )


def _call(f: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return f(), None
    except Exception as e:  # every exception is judged by the caller
        return None, e


def check_one(p: Picker) -> str:
    """Decode one input, make the call, judge it. Returns a short label (for statistics)."""
    good = p.bool(92)
    dt = p.choice(GOOD) if good else p.choice(BAD)
    op = p.int(0, 2)
    threads = p.choice(THREADS) if p.bool(96) else p.choice(BAD_THREADS)
    threads_sound = threads is None or (type(threads) is int and threads >= 1)
    dtype = _dtype_arg(p, dt)
    kw: dict[str, Any] = {}
    if op == 0:
        ndim = p.int(0, 6)
        big = p.bool(3)  # (convert: never)
        x = _array(p, _shape(p, ndim, BIG_BUDGET if big else BUDGET), dt)
        axes, sound = _axes(p, ndim)
        label = "permute"

        def fast(out: Any) -> Any:
            return mpslayout.permute(x, axes, dtype=dtype, out=out, threads=threads)

        def ref() -> Any:
            if not big:
                return slow.permute(x, axes, dtype=dtype)
            t = np.array(np.transpose(x, axes), order="C")  # (keeps 0-d arrays 0-d)
            return t if dtype is None else t.astype(dtype)
    else:
        ndim = p.int(1, 5)
        src, dst, sizes, s_blocks, sound = _layouts(p, ndim)
        letters = src.rstrip("0123456789abcdefghijklmnopqrstuvwxyz")
        if any(b == 0 for b in s_blocks.values()) or not letters.isupper():
            shape = _shape(p, ndim)
        else:
            shape = _physical(letters, s_blocks, sizes)
            if math.prod(shape) > BUDGET:
                shape = _shape(p, len(shape))
                sound = False  # (sizes no longer match the array)
        x = _array(p, shape, dt)
        if s_blocks:
            if len(s_blocks) == 1 and p.bool(50):
                kw["channels"] = sizes[next(iter(s_blocks))]
            else:
                kw["sizes"] = {c: sizes[c] for c in s_blocks}
            if p.bool(10):  # a size that does not fit
                kw = {"sizes": {c: sizes[c] + p.choice(DIMS) + 1 for c in s_blocks}}
                sound = False
        label = "convert"

        def fast(out: Any) -> Any:
            return mpslayout.convert(x, src, dst, dtype=dtype, out=out, threads=threads, **kw)

        def ref() -> Any:
            return slow.convert(x, src, dst, dtype=dtype, **kw)

    # a big padded result would take the slow twin too long, and numpy is the oracle of a
    # big permute only where the call is sound: elsewhere judge only the kind of outcome
    if label == "permute":
        judged = not big or (good and sound and _dtype_sound(dt, dtype))
    else:
        judged = _padded_size(dst, sizes) <= 8 * BUDGET
    with np.errstate(all="ignore"):
        want, ref_err = _call(ref) if judged else (None, None)
    out, out_sound = _out(p, x, want)
    before = out.tobytes() if isinstance(out, np.ndarray) else None
    got, err = _call(lambda: fast(out))
    if err is not None:
        if not isinstance(err, (ValueError, TypeError)) or isinstance(err, (IndexError, KeyError)):
            raise Finding(f"{label}: {type(err).__name__}: {err}") from err
        if before is not None and out.tobytes() != before:
            raise Finding(f"{label}: out= written by a call that failed: {err}")
        sound = sound and good and out_sound and threads_sound and _dtype_sound(dt, dtype)
        sound = sound and not _known(x, dtype, threads)
        if want is not None and sound:
            raise Finding(f"{label}: refused a call the slow twin accepts: {err!r}")
        return label + "-refused"
    if not judged:
        return label + "-unjudged"
    if want is None:
        raise Finding(f"{label}: accepted what the slow twin refuses ({ref_err!r})")
    if not isinstance(got, np.ndarray) or not got.flags.c_contiguous:
        raise Finding(f"{label}: result is not a C-contiguous ndarray")
    if out is not None and got is not out:
        raise Finding(f"{label}: out= given but another array returned")
    if not _bits_equal(got, want):
        raise Finding(f"{label}: result differs from the slow twin ({got.dtype}, {got.shape})")
    return label + "-ok"


def random_run(seconds: float, seed: int = 0,
               check: Callable[[Picker], str] | None = None) -> dict[str, int]:
    """Runs ``check`` (default: this file's check_one) on seeded pseudo-random choices."""
    check = check or check_one
    stats: dict[str, int] = {}
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop:
        case = seed * 1_000_003 + i
        try:
            label = check(RandomPicker(case))
        except Finding as e:
            raise Finding(f"{e}\n  reproduce: check_one(RandomPicker({case}))") from e
        stats[label] = stats.get(label, 0) + 1
        i += 1
    return stats


def hypothesis_run(check: Callable[[Picker], str], seconds: float,
                   max_examples: int) -> tuple[dict[str, int], int]:
    """Batches of hypothesis examples of ``check`` until ``seconds`` have passed (at least
    one batch): the outcome counts and the number of batches."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    counts: dict[str, int] = {}

    @settings(max_examples=max_examples, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def batch(data: st.DataObject) -> None:
        label = check(HypothesisPicker(data))
        counts[label] = counts.get(label, 0) + 1

    stop = time.monotonic() + seconds
    batches = 0
    while time.monotonic() < stop or batches == 0:
        batch()
        batches += 1
    return counts, batches



def instrument(atheris: Any) -> None:
    """Coverage feedback from mpslayout's Python layer and from this decoder, function by
    function: instrument_imports misses modules behind the editable install's custom
    loader, and instrument_all also instruments numpy (ten times slower)."""
    import inspect

    from mpslayout import engine, images, layouts, mps

    for module in (engine, layouts, mps, images, slow, sys.modules[__name__]):
        for f in list(vars(module).values()):
            f = inspect.unwrap(f) if callable(f) else f
            if inspect.isfunction(f) and f.__module__ == module.__name__:
                atheris.instrument_func(f)


def fuzz_main(check: Callable[[Picker], str]) -> None:
    """The command line of a fuzz target: ``--random [SECONDS]``, or atheris's arguments."""
    if len(sys.argv) >= 2 and sys.argv[1] == "--random":
        seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 60.0
        stats = random_run(seconds, seed=int(time.time()), check=check)
        print(f"{sum(stats.values())} executions: {stats}")
        return
    import atheris

    instrument(atheris)
    atheris.Setup(sys.argv, lambda data: check(BytesPicker(atheris.FuzzedDataProvider(data))))
    atheris.Fuzz()


if __name__ == "__main__":
    fuzz_main(check_one)
