// What bindings.cpp shares with the fast calls (fast_call.cpp): the array checks and the
// one-box runner.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "layout/engine.hpp"

// pybind11's types are hidden: so is everything here that holds them (GCC warns otherwise).
#if defined(__GNUC__) || defined(__clang__)
#define MPSL_PY_HIDDEN __attribute__((visibility("hidden")))
#else
#define MPSL_PY_HIDDEN
#endif

namespace mpslayout_py MPSL_PY_HIDDEN {

// Byte range [lo, hi) that an array's elements occupy, relative to its data pointer.
mpslayout::Range array_range(const pybind11::array& a);
// True if the memory spans of two arrays overlap (np.may_share_memory), given their ranges.
bool spans_overlap(const pybind11::array& src, const mpslayout::Range& sr,
                   const pybind11::array& dst, const mpslayout::Range& dr);
// One plain box, planned on the stack; the GIL released from 1 MB up, Ctrl-C honoured.
void run_box(const char* src, char* dst, const mpslayout::Dim* dims, int ndim, int esrc, int edst,
             mpslayout::Cast cast, int threads, int64_t bytes);

}  // namespace mpslayout_py
