// The converters' common call in one step, without Python bytecode: checks that a call is
// the common one (an exact ndarray of a plain native dtype, out None or an exactly
// matching array, threads None or an int), then runs one box. Anything else answers None,
// and the caller takes its full path, which checks and explains. Used by fast_permute and
// by FastPath (fast_path.cpp).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "layout/engine.hpp"
#include "python/arrays.hpp"

namespace mpslayout_py MPSL_PY_HIDDEN {

// `mode` bits: the MPS converters' dtypes only (float64 becoming float32 when dtype is
// None); axes may leave out axes of extent 1 (squeezed away, as depthwise_weights does).
constexpr long kMpsDtypes = 1, kSqueeze = 2;

// The source of a fast call, checked: an exact ndarray, its dtype, the cast and threads.
struct FastInput {
  // null until fast_input sets it (py::array's default constructor allocates an empty
  // float64 array: 60 code lines of numpy on every cold call)
  pybind11::array a = pybind11::reinterpret_borrow<pybind11::array>(pybind11::handle());
  int64_t esize = 0, edst = 0, threads = 1;
  mpslayout::Cast cast = mpslayout::Cast::None;
  pybind11::dtype out_dt;
};

// Fills `in` from the call's x, threads and dtype; false: not the common call.
bool fast_input(pybind11::handle x, pybind11::handle threads, long mode, pybind11::handle dtype,
                FastInput& in);

// Copies the box dims[0, ndim) (extents and source strides set; destination C order) of
// in.a into `out` (None: a new array) of shape shape[0, nshape), whose size is the box's.
// None if `out` is not an exactly matching, writable, separate C-contiguous array.
pybind11::object fast_run(const FastInput& in, mpslayout::Dim* dims, int ndim,
                          const pybind11::ssize_t* shape, int nshape, pybind11::handle out);

// np.ascontiguousarray(x.transpose(axes)) (cast to dtype) for the common call, else None.
pybind11::object fast_permute(pybind11::handle x, pybind11::handle axes, pybind11::handle out,
                              pybind11::handle threads, long mode, pybind11::handle dtype);

// Inside a catch block: the C++ exception as a Python error; returns nullptr.
PyObject* set_python_error();

// Adds fast_permute and set_default_threads to the module.
void add_fast_call(pybind11::module_& m);

}  // namespace mpslayout_py
