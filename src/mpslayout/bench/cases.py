"""The benchmark's cases: each one a layout conversion an MPS exporter really performs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from ..images import image_slices
from ..mps import conv_weights, dense_reshape, depthwise_weights, fc_weights

DTYPES = ("float32", "float16")


class BenchmarkError(RuntimeError):
    """A contender's result differs from numpy's: the benchmark refuses to time it."""


@dataclass(frozen=True)
class Case:
    """One conversion: an input shape, the mpslayout call and its numpy/torch equivalents.

    ``view(x)`` is a numpy view of ``x`` whose elements, in C order, are the result's;
    its shape may differ from ``out_shape`` (``out.reshape(view.shape)`` must be a view).
    ``torch_view(t)`` is the same view of a torch tensor. ``mps(x, out, dtype, threads)``
    returns the call to time: a :func:`functools.partial` of the public function that fills
    ``out`` (a C-level callable, so the timing holds no frame of the harness's own).
    """

    name: str
    shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    mps: Callable[[np.ndarray, np.ndarray, Any, int], np.ndarray]
    view: Callable[[np.ndarray], np.ndarray]
    torch_view: Callable[[Any], Any]
    description: str = ""
    quick: bool = False

    def label(self) -> str:
        return f"{self.name} {_shape_str(self.shape)}"


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ",".join(str(int(s)) for s in shape) + ")"


def _conv(name: str, o: int, i: int, kh: int, kw: int, what: str, quick: bool = False) -> Case:
    return Case(
        name=name,
        shape=(o, i, kh, kw),
        out_shape=(o, kh, kw, i),
        mps=lambda x, out, dt, th: partial(conv_weights, x, dtype=dt, out=out, threads=th),
        view=lambda x: x.transpose(0, 2, 3, 1),
        torch_view=lambda t: t.permute(0, 2, 3, 1),
        description=f"{what}: conv_weights, OIHW -> OHWI",
        quick=quick,
    )


def _fc_flatten(name: str, o: int, c: int, h: int, w: int, what: str) -> Case:
    return Case(
        name=name,
        shape=(o, c * h * w),
        out_shape=(o, h, w, c),
        mps=lambda x, out, dt, th: partial(
            fc_weights, x, input_shape=(c, h, w), dtype=dt, out=out, threads=th
        ),
        view=lambda x: x.reshape(o, c, h, w).transpose(0, 2, 3, 1),
        torch_view=lambda t: t.reshape(o, c, h, w).permute(0, 2, 3, 1),
        description=f"{what}: fc_weights(input_shape=({c},{h},{w})), "
        f"(O, C*H*W) -> (O, H, W, C)",
    )


def _fc_vector(name: str, o: int, n: int, what: str) -> Case:
    return Case(
        name=name,
        shape=(o, n),
        out_shape=(o, 1, 1, n),
        mps=lambda x, out, dt, th: partial(fc_weights, x, dtype=dt, out=out, threads=th),
        view=lambda x: x.reshape(o, 1, 1, n),
        torch_view=lambda t: t.reshape(o, 1, 1, n),
        description=f"{what}: fc_weights on a plain vector, (O, N) -> (O, 1, 1, N), a copy",
    )


def _dense_reshape(name: str, h: int, w: int, c: int, i: int, what: str, quick: bool) -> Case:
    return Case(
        name=name,
        shape=(h * w * c, i),
        out_shape=(h * w * c, i),
        mps=lambda x, out, dt, th: partial(
            dense_reshape, x, shape=(h, w, c), order="CHW", target="rows", dtype=dt, out=out,
            threads=th,
        ),
        view=lambda x: x.reshape(c, h, w, i).transpose(1, 2, 0, 3),
        torch_view=lambda t: t.reshape(c, h, w, i).permute(1, 2, 0, 3),
        description=f"{what}: dense_reshape(shape=({h},{w},{c}), order='CHW'), "
        "rows CHW -> HWC (docs/layouts.md section 6, Dense followed by Reshape)",
        quick=quick,
    )


def _depthwise(name: str, c: int, kh: int, kw: int, what: str) -> Case:
    return Case(
        name=name,
        shape=(c, 1, kh, kw),
        out_shape=(c, kh, kw),
        mps=lambda x, out, dt, th: partial(depthwise_weights, x, dtype=dt, out=out, threads=th),
        view=lambda x: x[:, 0],
        torch_view=lambda t: t[:, 0],
        description=f"{what}: depthwise_weights, (C, 1, kH, kW) -> (C, kH, kW), "
        "memory order unchanged",
    )


def _slices(name: str, n: int, c: int, h: int, w: int, what: str, quick: bool) -> Case:
    if c % 4:
        raise ValueError("the numpy equivalent below needs C to be a multiple of 4")
    s = c // 4
    return Case(
        name=name,
        shape=(n, c, h, w),
        out_shape=(n * s, h, w, 4),
        mps=lambda x, out, dt, th: partial(image_slices, x, dtype=dt, out=out, threads=th),
        view=lambda x: x.reshape(n, s, 4, h, w).transpose(0, 1, 3, 4, 2),
        torch_view=lambda t: t.reshape(n, s, 4, h, w).permute(0, 1, 3, 4, 2),
        description=f"{what}: image_slices, NCHW -> (N*ceil(C/4), H, W, 4)",
        quick=quick,
    )


CASES: tuple[Case, ...] = (
    _conv("resnet50.conv1", 64, 3, 7, 7, "ResNet-50 first layer, 7x7 (the tiny one)", quick=True),
    _conv("resnet50.layer1.3x3", 64, 64, 3, 3, "ResNet-50 layer1 3x3"),
    _conv("resnet50.layer1.1x1", 256, 64, 1, 1, "ResNet-50 layer1 1x1 expansion"),
    _conv("resnet50.layer3.3x3", 256, 256, 3, 3, "ResNet-50 layer3 3x3"),
    _conv("resnet50.layer4.3x3", 512, 512, 3, 3, "ResNet-50 layer4 3x3", quick=True),
    _conv("conv5x5", 128, 64, 5, 5, "a 5x5 convolution (Inception/GoogLeNet style)"),
    _conv("vgg16.conv1_1", 64, 3, 3, 3, "VGG-16 conv1_1"),
    _conv("vgg16.conv2_1", 128, 64, 3, 3, "VGG-16 conv2_1"),
    _conv("vgg16.conv4_1", 512, 256, 3, 3, "VGG-16 conv4_1"),
    _fc_flatten("vgg16.fc6.flatten", 4096, 512, 7, 7, "VGG-16 fc6, Linear after flatten"),
    _fc_vector("vgg16.fc7.vector", 4096, 4096, "VGG-16 fc7, Linear on a vector"),
    _dense_reshape("dcgan.dense_reshape", 4, 4, 512, 100, "DCGAN Dense(8192)->Reshape(4,4,512)",
                   quick=True),
    _depthwise("mobilenet.depthwise", 512, 3, 3, "MobileNet-style depthwise 3x3"),
    _slices("mpsimage.slices", 1, 64, 512, 512, "64-channel 512x512 feature map", quick=True),
)


def select_cases(pattern: str | None = None, *, quick: bool = False) -> list[Case]:
    """Cases whose name or input shape contains ``pattern`` (case-insensitive).

    Without a pattern: every case, or the ``quick`` subset when ``quick`` is set.
    """
    if pattern:
        p = pattern.lower()
        found = [c for c in CASES if p in c.label().lower()]
        if not found:
            names = ", ".join(c.name for c in CASES)
            raise ValueError(f"no benchmark case matches {pattern!r}; cases: {names}")
        return found
    return [c for c in CASES if c.quick] if quick else list(CASES)
