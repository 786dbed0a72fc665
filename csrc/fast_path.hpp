// The converters' common call answered in C++ (fast_path.cpp), shared with bindings.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace mpslayout_py {

// fast_permute's `mode` bits: the MPS converters' dtypes only (float64 becoming float32
// when dtype is None); axes may leave out axes of extent 1 (squeezed away).
constexpr long kMpsDtypes = 1, kSqueeze = 2;

// np.ascontiguousarray(x.transpose(axes)) (cast to dtype) for the common call, else None:
// the caller takes its full path. Defined in bindings.cpp.
pybind11::object fast_permute(pybind11::handle x, pybind11::handle axes, pybind11::handle out,
                              pybind11::handle threads, long mode, pybind11::handle dtype);

// Adds `FastPath` to the module: a callable wrapping a public Python converter.
void add_fast_path_type(pybind11::module_& m);

}  // namespace mpslayout_py
