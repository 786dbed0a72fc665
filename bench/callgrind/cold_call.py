"""One cold call under callgrind (run by run.sh): warm-up calls uninstrumented, then the
measured call between the markers of libmark.so.

usage: cold_call.py LIBMARK {ours,numpy,memcpy,empty} [O,I,kH,kW]
"""

import ctypes
import sys

import numpy as np

import mpslayout

lib = ctypes.CDLL(sys.argv[1])
start, stop = lib.mark_start, lib.mark_stop
which = sys.argv[2]
shape = tuple(int(v) for v in sys.argv[3].split(",")) if len(sys.argv) > 3 else (64, 64, 3, 3)
w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
o = np.empty((shape[0], shape[2], shape[3], shape[1]), np.float32)
src = np.empty(w.nbytes, np.uint8)
dst = np.empty(w.nbytes, np.uint8)
conv, copyto = mpslayout.conv_weights, np.copyto
if which == "ours":
    conv(w, out=o)
    conv(w, out=o)
    start()
    conv(w, out=o)
    stop()
elif which == "numpy":
    copyto(o, w.transpose(0, 2, 3, 1))
    copyto(o, w.transpose(0, 2, 3, 1))
    start()
    copyto(o, w.transpose(0, 2, 3, 1))
    stop()
elif which == "memcpy":
    copyto(dst, src)
    copyto(dst, src)
    start()
    copyto(dst, src)
    stop()
else:  # the markers alone
    start()
    stop()
