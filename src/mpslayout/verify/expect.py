"""Expected outputs (``--expect NAME=FILE.npy|.pb``): values the model is known to give on
the input (ONNX's test data sets ship them as ``output_0.pb``). With an oracle they are a
second judge of the oracle itself (does the model ONNX Runtime runs give them?); without
one (a model no ONNX Runtime runs, even upgraded), they are the only judge: the export's
layers are run chained from the input and the model's outputs compared with them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

from . import tolerance as T
from .files import VerifyError
from .graph import onnx_module
from .report import Report, Row

__all__ = ["Expected", "check_expected", "load_expected"]

Expected = Union[np.ndarray, str, "os.PathLike[str]"]


def _read(path: str) -> np.ndarray:
    if path.endswith(".pb"):
        onnx = onnx_module()
        try:
            return np.asarray(onnx.numpy_helper.to_array(onnx.load_tensor(path)))
        except FileNotFoundError:
            raise VerifyError(f"--expect file not found: {path}") from None
        except Exception as e:
            raise VerifyError(f"cannot read --expect {path} as an ONNX TensorProto: "
                              f"{type(e).__name__}: {e}") from None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise VerifyError(f"cannot read --expect {path}: {e}") from None


def load_expected(given: Expected | Mapping[str | None, Expected] | None,
                  outputs: list[str]) -> dict[str, np.ndarray]:
    """{model output name: array} of ``given``: an array or path for a model's only output,
    or {name: array or path}; ``None`` keys mean the only output. Names must be outputs."""
    if given is None:
        return {}
    table = dict(given) if isinstance(given, Mapping) else {None: given}
    out: dict[str, np.ndarray] = {}
    for k, v in table.items():
        if k is None:
            if len(outputs) != 1:
                raise VerifyError(f"--expect FILE gives one array but the model has outputs "
                                  f"{outputs}: pass --expect NAME=FILE for each")
            k = outputs[0]
        if k not in outputs:
            raise VerifyError(f"--expect names {k!r}; the model's outputs are {outputs}")
        out[k] = (_read(os.fspath(v)) if isinstance(v, (str, os.PathLike))
                  else np.asarray(v))
    return out


def check_expected(report: Report, expected: Mapping[str, np.ndarray],
                   values: Mapping[str, Any], judge: str) -> None:
    """One row per expected output: ``judge``'s value of it (the oracle's, or the
    reference executor's chained result when the expected values are the oracle) against
    the expected array, within atol + rtol*|expected|."""
    for name, want in expected.items():
        row = Row(len(report.rows) + 1, f"expected {name}", "expected", "expected", False,
                  name, list(want.shape))
        got = values.get(name)
        if got is None:
            row.error = f"{judge} gives no value for the model's output {name!r}"
        elif np.shape(got) != want.shape:
            row.error = (f"{judge}'s {name!r} has shape {list(np.shape(got))}, the expected "
                         f"one {list(want.shape)}")
        elif want.dtype.kind not in "fiub" or np.asarray(got).dtype.kind not in "fiub":
            row.error = f"the expected {name!r} is {want.dtype}, not numbers"
        else:
            row.isolated = T.check(np.asarray(got, np.float64), want, report.atol, report.rtol,
                                   0.0)
            row.notes.append(f"{judge}'s output against the expected values (--expect)")
        report.rows.append(row)
