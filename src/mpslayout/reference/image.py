"""MPSImage's slice layout (docs/layouts.md section 5, MPSImage: 4-channel slices), restated
for the reference executor.

``buf[n*S + s][y][x][k] = T[n][y][x][4*s + k]`` (from NHWC), 0 where ``4*s + k >= C``;
``S = ceil(C/4)`` and ``P = 4`` components, except ``S = 1, P = C`` when C <= 2. Written
here with plain numpy, independently of :func:`mpslayout.image_slices`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

STORAGE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))


def slice_shape(channels: int) -> tuple[int, int]:
    """(S, P): slices per image and components per pixel of an image with ``channels``."""
    if channels < 1:
        raise ValueError(f"an image needs at least 1 channel, got {channels}")
    if channels <= 2:
        return 1, channels
    return -(-channels // 4), 4


def storage_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in STORAGE_DTYPES:
        raise ValueError(f"MPS images store float16 or float32, got {dt}")
    return dt


def to_slices(nhwc: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """The slice layout ``(N*S, H, W, P)`` of an NHWC array, rounded once to ``dtype``."""
    a = np.asarray(nhwc)
    if a.ndim != 4:
        raise ValueError(f"expected an NHWC array, got shape {a.shape}")
    n, h, w, c = a.shape
    s = slice_shape(c)[0]
    dt = storage_dtype(dtype)
    if c <= 2:
        return np.ascontiguousarray(a.astype(dt))
    padded = np.zeros((n, h, w, 4 * s), dt)
    padded[..., :c] = a.astype(dt)
    return np.ascontiguousarray(
        padded.reshape(n, h, w, s, 4).transpose(0, 3, 1, 2, 4).reshape(n * s, h, w, 4))


def from_slices(data: np.ndarray, channels: int) -> np.ndarray:
    """NHWC array (same dtype) of slice-layout ``data`` holding ``channels`` per image."""
    a = np.asarray(data)
    s, p = slice_shape(channels)
    if a.ndim != 4 or a.shape[3] != p or a.shape[0] % s:
        raise ValueError(f"slice data of {channels} channels must be (N*{s}, H, W, {p}), "
                         f"got shape {a.shape}")
    n, h, w = a.shape[0] // s, a.shape[1], a.shape[2]
    if channels <= 2:
        return a.copy()
    full = a.reshape(n, s, h, w, 4).transpose(0, 2, 3, 1, 4).reshape(n, h, w, 4 * s)
    return np.ascontiguousarray(full[..., :channels])


@dataclass(frozen=True)
class Image:
    """An MPSImage's contents: slice-layout ``data`` ``(N*S, H, W, P)`` and its channel count
    (which the slices alone cannot tell: the last slice may hold padding)."""

    data: np.ndarray
    channels: int

    def __post_init__(self) -> None:
        if isinstance(self.channels, bool) or not isinstance(self.channels, (int, np.integer)):
            raise TypeError(f"channels must be an int, got {type(self.channels).__name__}")
        s, p = slice_shape(int(self.channels))
        a = self.data
        if not isinstance(a, np.ndarray) or a.ndim != 4:
            raise ValueError("image data must be a 4-D array (N*S, H, W, P)")
        storage_dtype(a.dtype)
        if a.shape[3] != p or a.shape[0] % s or a.shape[0] == 0:
            raise ValueError(f"an image of {self.channels} channels is (N*{s}, H, W, {p}), "
                             f"got shape {a.shape}")

    # ---------------------------------------------------------------- geometry

    @property
    def slices(self) -> int:
        return slice_shape(int(self.channels))[0]

    @property
    def batch(self) -> int:
        return self.data.shape[0] // self.slices

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C)."""
        return self.batch, self.height, self.width, int(self.channels)

    # ---------------------------------------------------------------- conversions

    @classmethod
    def from_nhwc(cls, x: Any, dtype: Any = np.float32) -> Image:
        a = np.asarray(x)
        return cls(to_slices(a, dtype), int(a.shape[3]))

    @classmethod
    def from_nchw(cls, x: Any, dtype: Any = np.float32) -> Image:
        a = np.asarray(x)
        if a.ndim != 4:
            raise ValueError(f"expected an NCHW array, got shape {a.shape}")
        return cls.from_nhwc(a.transpose(0, 2, 3, 1), dtype)

    def nhwc(self, dtype: Any = np.float64) -> np.ndarray:
        """The channels (padding dropped) as an NHWC array of ``dtype`` (exact widening)."""
        return from_slices(self.data, int(self.channels)).astype(dtype)

    def nchw(self, dtype: Any = np.float64) -> np.ndarray:
        return np.ascontiguousarray(self.nhwc(dtype).transpose(0, 3, 1, 2))

    def padding_is_zero(self) -> bool:
        """True when the channels past C in the last slice are all zero (section 5)."""
        c = int(self.channels)
        if c <= 2 or c % 4 == 0:
            return True
        last = self.data.reshape(self.batch, self.slices, *self.data.shape[1:])[:, -1]
        return not np.any(last[..., c % 4:])
