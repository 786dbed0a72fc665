"""Reads what the Keras reader needs from an HDF5 file, in a child process.

libhdf5 can loop forever on a corrupt file (a byte-mutated global heap makes reading the
``model_config`` attribute never return; tests/fuzz/regressions/h5_attr_hang.h5), and no
Python exception can stop it. So the file's metadata is read here, in a child the parent
kills after a timeout, and the weights are then read by the parent straight from the file
bytes (Keras writes contiguous, unfiltered datasets) without calling libhdf5 again.

Run as ``python -c <this file's source> PATH [ZIP_MEMBER]``: prints one JSON object,
    {"config": str | null, "weight_names": {layer: [name, ...]},
     "datasets": {h5 path: [shape, dtype.str, byte offset | null]}}
or {"error": message}. Imports nothing from mpslayout, so the child stays small.
"""

import sys

if __name__ == "__main__":  # run with -c: nothing in the working folder may shadow a module
    sys.path[:] = [p for p in sys.path if p]

import json


def _names(values):
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def _attr_list(g, name):
    """A Keras h5 list attribute, possibly split into name0, name1, ... chunks."""
    if name in g.attrs:
        return _names(g.attrs[name])
    values, i = [], 0
    while f"{name}{i}" in g.attrs:
        values.extend(_names(g.attrs[f"{name}{i}"]))
        i += 1
    return values


def probe(f):
    raw = f.attrs.get("model_config")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    out = {"config": None if raw is None else str(raw), "weight_names": {}, "datasets": {}}
    mw = f.get("model_weights")
    if mw is not None:
        for layer in mw:
            g = mw[layer]
            if hasattr(g, "attrs") and not hasattr(g, "shape"):
                out["weight_names"][layer] = _attr_list(g, "weight_names")

    def visit(path, obj):
        if not hasattr(obj, "shape") or obj.shape is None:
            return
        offset = None
        if obj.chunks is None and obj.compression is None and not obj.external:
            offset = obj.id.get_offset()  # None when the data was never written
        out["datasets"][path] = [[int(n) for n in obj.shape], obj.dtype.str, offset]

    f.visititems(visit)
    return out


def probe_file(path, member=None):
    """probe() of the HDF5 file at ``path``, or of its zip member ``member``."""
    import h5py

    if member:
        import zipfile

        with zipfile.ZipFile(path) as zf, zf.open(member) as m, h5py.File(m, "r") as f:
            return probe(f)
    with h5py.File(path, "r") as f:
        return probe(f)


def main(argv):
    try:
        result = probe_file(argv[1], argv[2] if len(argv) > 2 else None)
    except Exception as e:  # any failure of a malformed file is reported, not raised
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
