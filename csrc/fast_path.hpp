// The converters' common call answered in C++ (fast_path.cpp), and what it shares with
// bindings.cpp (the array checks and the one-box runner).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "layout/engine.hpp"

namespace mpslayout_py {

// Byte range [lo, hi) that an array's elements occupy, relative to its data pointer.
mpslayout::Range array_range(const pybind11::array& a);
// True if the memory spans of two arrays overlap (np.may_share_memory), given their ranges.
bool spans_overlap(const pybind11::array& src, const mpslayout::Range& sr,
                   const pybind11::array& dst, const mpslayout::Range& dr);
// One plain box, planned on the stack; the GIL released from 1 MB up, Ctrl-C honoured.
void run_box(const char* src, char* dst, const mpslayout::Dim* dims, int ndim, int esrc, int edst,
             mpslayout::Cast cast, int threads, int64_t bytes);

// Adds fast_permute, set_default_threads and FastPath to the module.
void add_fast_path(pybind11::module_& m);

}  // namespace mpslayout_py
