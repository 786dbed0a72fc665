// The converters' common call in one step (fast_call.hpp), and fast_permute, its
// entry from Python.
#include "python/fast_call.hpp"

#include <atomic>
#include <cstring>
#include <vector>

namespace py = pybind11;
using namespace mpslayout;

namespace mpslayout_py MPSL_PY_HIDDEN {
namespace {
// Default thread count for threads=None; 0 until Python has resolved it (fast path off).
std::atomic<int> g_default_threads{0};

bool native_order(char byteorder) {
  const uint16_t probe = 1;
  const bool little = *reinterpret_cast<const char*>(&probe) == 1;
  return byteorder == '=' || byteorder == '|' || byteorder == (little ? '<' : '>');
}

// numpy type numbers moved as they are (bool, integers, float16/32/64, complex64), and the
// subset MPS weights keep (uint8, float16, float32).
constexpr int kUByte = 2, kFloat = 11, kDouble = 12, kCFloat = 14, kHalf = 23;
bool plain_type(int num, bool mps) {
  if (mps) return num == kFloat || num == kHalf || num == kUByte;
  return (num >= 0 && num <= kDouble) || num == kCFloat || num == kHalf;
}

// The fused cast from type number `from` to `to`, if the engine runs it.
bool fast_cast(int from, int to, Cast& cast) {
  if (from == kFloat && to == kHalf) cast = Cast::F32toF16;
  else if (from == kHalf && to == kFloat) cast = Cast::F16toF32;
  else if (from == kDouble && to == kFloat) cast = Cast::F64toF32;
  else return false;
  return true;
}

bool same_dtype(const py::dtype& a, PyObject* b) {
  // builtin descriptors are shared: the pointer compare nearly always decides
  return a.ptr() == b || py::detail::npy_api::get().PyArray_EquivTypes_(a.ptr(), b);
}

}  // namespace

MPSL_HOT bool fast_input(py::handle x, py::handle threads, long mode, py::handle dtype, FastInput& in) {
  const bool mps = mode & kMpsDtypes;
  auto& api = py::detail::npy_api::get();
  if (Py_TYPE(x.ptr()) != api.PyArray_Type_) return false;
  in.a = py::reinterpret_borrow<py::array>(x);
  if (in.a.ndim() > 8) return false;
  const py::dtype dt = in.a.dtype();
  in.esize = dt.itemsize();
  const int num = dt.num();
  if (!native_order(dt.byteorder()) || (in.esize != 1 && in.esize != 2 && in.esize != 4 && in.esize != 8))
    return false;
  in.out_dt = dt;
  if (dtype.is_none()) {
    if (mps && num == kDouble) {
      in.cast = Cast::F64toF32;
      in.out_dt = py::dtype(kFloat);
    } else if (!plain_type(num, mps)) {
      return false;
    }
  } else {
    if (!plain_type(num, mps) && !(mps && num == kDouble)) return false;
    PyObject* descr = nullptr;  // any spelling numpy takes: np.float16, "float16", a dtype
    if (!api.PyArray_DescrConverter_(dtype.ptr(), &descr) || descr == nullptr) {
      PyErr_Clear();
      return false;
    }
    in.out_dt = py::reinterpret_steal<py::dtype>(descr);
    if (!native_order(in.out_dt.byteorder())) return false;
    if (!same_dtype(dt, in.out_dt.ptr()) && !fast_cast(num, in.out_dt.num(), in.cast)) return false;
  }
  if (threads.is_none()) {
    in.threads = g_default_threads.load(std::memory_order_relaxed);
    if (in.threads == 0) return false;
  } else {
    if (!PyLong_CheckExact(threads.ptr())) return false;
    int overflow = 0;
    in.threads = PyLong_AsLongLongAndOverflow(threads.ptr(), &overflow);
    if (overflow || in.threads < 1 || in.threads > 1024) return false;
  }
  in.edst = in.cast == Cast::None ? in.esize : cast_dst_size(in.cast);
  return true;
}

MPSL_HOT py::object fast_run(const FastInput& in, Dim* dims, int ndim, const py::ssize_t* shape, int nshape,
                    py::handle out) {
  auto& api = py::detail::npy_api::get();
  py::object result;
  if (out.is_none()) {
    result = py::array(in.out_dt, std::vector<py::ssize_t>(shape, shape + nshape));
  } else {
    if (Py_TYPE(out.ptr()) != api.PyArray_Type_) return py::none();
    const auto o = py::reinterpret_borrow<py::array>(out);
    constexpr int kCContiguous = 0x1, kWriteable = 0x400;
    const int flags = py::detail::array_proxy(o.ptr())->flags;
    if (!(flags & kCContiguous) || !(flags & kWriteable) || o.ndim() != nshape ||
        !same_dtype(in.out_dt, o.dtype().ptr()))
      return py::none();
    for (int i = 0; i < nshape; ++i)
      if (o.shape(i) != shape[i]) return py::none();
    if (spans_overlap(in.a, array_range(in.a), o, array_range(o))) return py::none();
    result = o;
  }
  const char* src = static_cast<const char*>(in.a.data());
  char* dst = static_cast<char*>(py::detail::array_proxy(result.ptr())->data);
  // C-contiguous destination strides; `in_order`: the source already is in that order
  // (a 1x1 or depthwise kernel, a permutation of unit axes), a straight copy
  int64_t step = in.edst, src_step = in.esize, elements = 1;
  bool in_order = in.cast == Cast::None;
  for (int i = ndim; i-- > 0;) {
    Dim& d = dims[i];
    d.ds = step;
    step *= std::max<int64_t>(d.n, 1);
    elements *= d.n;
    if (d.n != 1) {
      in_order = in_order && d.ss == src_step;
      src_step *= d.n;
    }
  }
  if (in_order && 2 * elements * in.esize < kParallelBytes) {  // one thread's worth: a copy
    copy_in_order(src, dst, elements * in.esize);
  } else {
    run_box(src, dst, dims, ndim, static_cast<int>(in.esize), static_cast<int>(in.edst), in.cast,
            static_cast<int>(in.threads), elements * (in.esize + in.edst));
  }
  return result;
}

MPSL_HOT py::object fast_permute(py::handle x, py::handle axes, py::handle out, py::handle threads, long mode,
                        py::handle dtype) {
  FastInput in;
  if (!fast_input(x, threads, mode, dtype, in)) return py::none();
  const py::array& a = in.a;
  const py::ssize_t nd = a.ndim();
  PyObject* ax = axes.ptr();
  if (!(PyTuple_CheckExact(ax) || PyList_CheckExact(ax))) return py::none();
  // the MPS converters may leave unit axes out (depthwise: (C, 1, kH, kW) -> (C, kH, kW))
  const py::ssize_t nout = PySequence_Fast_GET_SIZE(ax);
  if (nout != nd && !((mode & kSqueeze) && nout < nd)) return py::none();
  py::ssize_t shape[8];
  Dim dims[8];
  unsigned seen = 0;
  for (py::ssize_t i = 0; i < nout; ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(ax, i);
    if (!PyLong_CheckExact(item)) return py::none();
    const long p = PyLong_AsLong(item);
    if (p < 0 || p >= nd || (seen >> p) & 1u) {
      PyErr_Clear();
      return py::none();
    }
    seen |= 1u << p;
    shape[i] = a.shape(p);
    dims[i] = {a.shape(p), a.strides(p), 0};
  }
  for (py::ssize_t p = 0; p < nd; ++p)
    if (!((seen >> p) & 1u) && a.shape(p) != 1) return py::none();  // only unit axes drop
  return fast_run(in, dims, static_cast<int>(nout), shape, static_cast<int>(nout), out);
}

PyObject* set_python_error() {
  try {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  }
  return nullptr;
}

namespace {

// fast_permute as a plain METH_FASTCALL function (pybind11's general dispatcher alone is a
// large share of a cold small call).
PyObject* fast_permute_raw(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "fast_permute(x, axes, out, threads, mode, dtype)");
    return nullptr;
  }
  try {
    const long mode = PyLong_AsLong(args[4]);
    if (mode == -1 && PyErr_Occurred()) return nullptr;
    return fast_permute(args[0], args[1], args[2], args[3], mode, args[5]).release().ptr();
  } catch (...) {
    return set_python_error();
  }
}

PyMethodDef fast_permute_def = {
    "fast_permute", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_permute_raw)),
    METH_FASTCALL,
    "fast_permute(x, axes, out, threads, mode, dtype): np.ascontiguousarray(x.transpose(axes)) "
    "for the common call, else None (take the full path). mode: 0 any plain dtype, 1 MPS "
    "weight dtypes, 3 MPS dtypes and unit axes may be left out of axes."};

}  // namespace

void add_fast_call(py::module_& m) {
  m.add_object("fast_permute", py::reinterpret_steal<py::object>(
                                   PyCFunction_NewEx(&fast_permute_def, nullptr, m.attr("__name__").ptr())));
  m.def("set_default_threads", [](int n) { g_default_threads.store(n < 0 ? 0 : n); }, py::arg("n"),
        "threads=None for the fast paths (0: unknown, fast paths off).");
}

}  // namespace mpslayout_py
