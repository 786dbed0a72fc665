"""Every module of the package imports on every supported Python, with or without the
optional packages: a module-level ``X | Y`` type alias (fine on 3.10+, a TypeError on 3.9)
once made ``mpslayout.verify`` unimportable on 3.9, and only a 3.9 run shows that."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import mpslayout

OPTIONAL = {"onnx", "onnxruntime", "torch", "keras", "h5py", "safetensors", "ml_dtypes",
            "matplotlib", "onnxscript"}
# a package that fails to import is still listed (and fails below); the walk goes on
MODULES = sorted(m.name for m in pkgutil.walk_packages(mpslayout.__path__, "mpslayout.",
                                                       onerror=lambda name: None)
                 if not m.name.endswith("__main__"))  # __main__ runs the CLI


def test_walk_finds_the_package() -> None:
    assert {"mpslayout.verify", "mpslayout.export", "mpslayout.rnn"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as e:  # only a missing optional package is an excuse
        if (e.name or "").split(".")[0] not in OPTIONAL:
            raise
        pytest.skip(f"{name} needs {e.name}")
