// FastPath (fast_path.cpp): the public converters' common call without Python bytecode.
#pragma once
#include <pybind11/pybind11.h>

#include "python/arrays.hpp"

namespace mpslayout_py MPSL_PY_HIDDEN {

// Adds the FastPath type to the module.
void add_fast_path(pybind11::module_& m);

}  // namespace mpslayout_py
