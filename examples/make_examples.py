"""Writes the bundled example tensors (seeded, so the files are reproducible).

conv1_oihw.npy: a ResNet-style first convolution, PyTorch layout (64, 3, 7, 7) float32.
"""

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(2026)
    w = (rng.standard_normal((64, 3, 7, 7)) * 0.05).astype(np.float32)
    np.save(HERE / "conv1_oihw.npy", w)


if __name__ == "__main__":
    main()
