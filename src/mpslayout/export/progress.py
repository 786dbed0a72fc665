"""Progress of an export on stderr (any target): layers and bytes done."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress"]


class Progress:
    """Layers and bytes done, on stderr: tqdm when importable, else one updating line.
    Silent unless enabled and stderr is a terminal."""

    def __init__(self, layers: int, total_bytes: int, enabled: bool,
                 stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.layers, self.total = layers, max(total_bytes, 1)
        self.done_layers = self.done = 0
        self.name = ""
        self._last = 0.0
        self._bar: Any = None
        if self.enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1024,
                             file=self.stream, desc="export", leave=False)

    def start(self, name: str) -> None:
        self.name = name
        self._draw(force=True)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)
        self._draw()

    def finish_layer(self) -> None:
        self.done_layers += 1
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.done_layers}/{self.layers} layers {self.name}")
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 24)
        self.stream.write(
            f"\rexport [{bar:<24}] {self.done_layers}/{self.layers} layers "
            f"{self.done / 2**20:.1f}/{self.total / 2**20:.1f} MB {self.name[:40]:<40}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self.stream.write("\r" + " " * 110 + "\r")
            self.stream.flush()


# ------------------------------------------------------------------------- files
