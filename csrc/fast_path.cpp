// The converters' common call, answered in C++ without running Python bytecode.
//
// fast_permute: np.ascontiguousarray(x.transpose(axes)) (cast to dtype) for the common call
// (an exact ndarray of a plain native dtype, out None or an exactly matching array, threads
// None or an int), else None: the caller takes its full path, which checks and explains.
//
// FastPath: a public converter (permute, conv_weights, depthwise_weights, fc_weights,
// dense_reshape) as a callable that parses the call's arguments here, answers the common
// case through the same box runner, and passes every other call, unchanged, to the Python
// function it wraps. Why: with cold caches one Python frame (its bytecode, its globals and
// the interpreter's handlers, all from memory) took about 12 us, and dense_reshape's
// checks about 70 us, against 20 us for copying a small weight (bench/README.md, "Small
// calls").
#include "fast_path.hpp"

#include <structmember.h>

#include <atomic>
#include <cstring>
#include <vector>

namespace py = pybind11;
using namespace mpslayout;

namespace mpslayout_py {
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

// `mode` bits: the MPS converters' dtypes only (float64 becoming float32 when dtype is
// None); axes may leave out axes of extent 1 (squeezed away, as depthwise_weights does).
constexpr long kMpsDtypes = 1, kSqueeze = 2;

// The source of a fast call, checked: an exact ndarray, its dtype, the cast and threads.
struct FastInput {
  py::array a;
  int64_t esize = 0, edst = 0, threads = 1;
  Cast cast = Cast::None;
  py::dtype out_dt;
};

bool same_dtype(const py::dtype& a, PyObject* b) {
  // builtin descriptors are shared: the pointer compare nearly always decides
  return a.ptr() == b || py::detail::npy_api::get().PyArray_EquivTypes_(a.ptr(), b);
}

// False: not the common call.
bool fast_input(py::handle x, py::handle threads, long mode, py::handle dtype, FastInput& in) {
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

// Copies the box dims[0, ndim) (extents and source strides set; destination C order) of
// in.a into `out` (None: a new array) of shape shape[0, nshape), whose size is the box's.
// None if `out` is not an exactly matching, writable, separate C-contiguous array.
py::object fast_run(const FastInput& in, Dim* dims, int ndim, const py::ssize_t* shape, int nshape,
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

py::object fast_permute(py::handle x, py::handle axes, py::handle out, py::handle threads, long mode,
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

// Maps C++ exceptions to a Python error; returns nullptr.
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

// ---- FastPath ----

enum Kind : int { kPermute, kConv, kDepthwise, kFc, kDense, kKinds };
const char* const kKindNames[kKinds] = {"permute", "conv", "depthwise", "fc", "dense_reshape"};

struct FastPathObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* full;  // the Python function: the full path
  PyObject* dict;  // __wrapped__, __doc__, __name__, ... (functools.update_wrapper)
  int kind;
};

// Argument names, interned once: keyword names from Python code are interned too, so a
// pointer compare almost always decides.
enum Name {
  kX, kW, kB, kAxes, kLayout, kGroups, kInChannels, kInputShape, kFlatten, kShape, kOrder,
  kTarget, kDtype, kOut, kThreads, kNames
};
const char* const kNameText[kNames] = {"x", "w", "b", "axes", "layout", "groups", "in_channels",
                                       "input_shape", "flatten", "shape", "order", "target",
                                       "dtype", "out", "threads"};
PyObject* g_names[kNames];
// Each kind's parameters, in order; the first `positional` may be given positionally.
struct Signature {
  int positional, count;
  Name names[9];
};
const Signature kSignatures[kKinds] = {
    {2, 5, {kX, kAxes, kDtype, kOut, kThreads}},
    {1, 6, {kW, kLayout, kGroups, kDtype, kOut, kThreads}},
    {1, 6, {kW, kLayout, kInChannels, kDtype, kOut, kThreads}},
    {1, 7, {kW, kInputShape, kLayout, kFlatten, kDtype, kOut, kThreads}},
    {2, 9, {kW, kB, kShape, kLayout, kOrder, kTarget, kDtype, kOut, kThreads}},
};
// axes per layout: conv OIHW, HWIO; depthwise OIHW, HWCM
PyObject *g_conv_oihw, *g_conv_hwio, *g_dw_oihw, *g_dw_hwcm;

int name_index(PyObject* key) {
  for (int i = 0; i < kNames; ++i)
    if (key == g_names[i]) return i;
  if (PyUnicode_Check(key))
    for (int i = 0; i < kNames; ++i)
      if (PyUnicode_Compare(key, g_names[i]) == 0) return i;
  return -1;
}

bool is_str(PyObject* v, const char* text) {
  return PyUnicode_CheckExact(v) && PyUnicode_CompareWithASCIIString(v, text) == 0;
}

// v absent, or one of two strings: 0 (absent or the first, the default), 1, or -1.
int choice(PyObject* v, const char* first, const char* second) {
  if (v == nullptr || is_str(v, first)) return 0;
  return is_str(v, second) ? 1 : -1;
}

// Three positive exact ints from a tuple or list; false otherwise.
bool three_ints(PyObject* v, int64_t t[3]) {
  if (!(PyTuple_CheckExact(v) || PyList_CheckExact(v)) || PySequence_Fast_GET_SIZE(v) != 3) return false;
  for (int i = 0; i < 3; ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(v, i);
    int overflow = 0;
    if (!PyLong_CheckExact(item)) return false;
    t[i] = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow || t[i] < 1 || t[i] > (int64_t(1) << 40)) return false;
  }
  return true;
}

// Strides of (y, x, c) over a flat neuron axis of stride s_n, flattened in order CHW (0) or
// HWC (1): mps.py's _neuron_strides.
void neuron_strides(int64_t s_n, int64_t h, int64_t w, int64_t c, int order, int64_t out[3]) {
  if (order == 0) {
    out[0] = w * s_n; out[1] = s_n; out[2] = h * w * s_n;
  } else {
    out[0] = w * c * s_n; out[1] = c * s_n; out[2] = s_n;
  }
}

py::handle arg(PyObject* const* v, int k) { return v[k] ? v[k] : Py_None; }

// fc_weights: (O, N) or (N, O) -> (O, H, W, C) (mps.py; section 4).
py::object fast_fc(PyObject* const* v) {
  const int layout = choice(v[kLayout], "OI", "IO"), flatten = choice(v[kFlatten], "CHW", "HWC");
  if (layout < 0 || flatten < 0) return py::none();
  FastInput in;
  if (!fast_input(v[kW], arg(v, kThreads), kMpsDtypes, arg(v, kDtype), in) || in.a.ndim() != 2)
    return py::none();
  const int o_ax = layout, n_ax = 1 - layout;
  const int64_t o = in.a.shape(o_ax), n = in.a.shape(n_ax);
  int64_t c = n, h = 1, w = 1, order = 1;  // input_shape None: a plain vector, (O, 1, 1, N)
  if (v[kInputShape] && v[kInputShape] != Py_None) {
    int64_t t[3];
    if (!three_ints(v[kInputShape], t)) return py::none();
    if (flatten == 0) { c = t[0]; h = t[1]; w = t[2]; } else { h = t[0]; w = t[1]; c = t[2]; }
    order = flatten;
    if (c * h * w != n) return py::none();
  }
  int64_t s[3];
  neuron_strides(in.a.strides(n_ax), h, w, c, static_cast<int>(order), s);
  Dim dims[4] = {{o, in.a.strides(o_ax), 0}, {h, s[0], 0}, {w, s[1], 0}, {c, s[2], 0}};
  const py::ssize_t shape[4] = {o, h, w, c};
  return fast_run(in, dims, 4, shape, 4, arg(v, kOut));
}

// dense_reshape(target="rows", b=None): (H*W*C, I) rows in HWC order, returned as
// (weights, None) (mps.py; section 6).
py::object fast_dense(PyObject* const* v) {
  if (v[kB] && v[kB] != Py_None) return py::none();
  if (v[kTarget] && !is_str(v[kTarget], "rows")) return py::none();
  const int layout = choice(v[kLayout], "OI", "IO"), order = choice(v[kOrder], "CHW", "HWC");
  int64_t t[3];
  if (layout < 0 || order < 0 || v[kShape] == nullptr || !three_ints(v[kShape], t)) return py::none();
  FastInput in;
  if (!fast_input(v[kW], arg(v, kThreads), kMpsDtypes, arg(v, kDtype), in) || in.a.ndim() != 2)
    return py::none();
  const int n_ax = layout, i_ax = 1 - layout;
  const int64_t n = in.a.shape(n_ax), i = in.a.shape(i_ax), h = t[0], w = t[1], c = t[2];
  if (h * w * c != n) return py::none();
  int64_t s[3];
  neuron_strides(in.a.strides(n_ax), h, w, c, order, s);
  Dim dims[4] = {{h, s[0], 0}, {w, s[1], 0}, {c, s[2], 0}, {i, in.a.strides(i_ax), 0}};
  const py::ssize_t shape[2] = {n, i};
  py::object weights = fast_run(in, dims, 4, shape, 2, arg(v, kOut));
  if (weights.is_none()) return weights;
  return py::make_tuple(weights, py::none());
}

// The fast path's answer: an object, None for "take the full path", or an error (thrown).
py::object try_fast(const FastPathObject* self, PyObject* const* args, Py_ssize_t nargs,
                    PyObject* kwnames) {
  const Signature& sig = kSignatures[self->kind];
  PyObject* v[kNames] = {};
  if (nargs > sig.positional) return py::none();
  for (Py_ssize_t i = 0; i < nargs; ++i) v[sig.names[i]] = args[i];
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    const int k = name_index(PyTuple_GET_ITEM(kwnames, i));
    bool known = false;
    for (int j = 0; j < sig.count; ++j) known = known || sig.names[j] == k;
    // an unknown or repeated name: the full path says what is wrong
    if (!known || v[k] != nullptr) return py::none();
    v[k] = args[nargs + i];
  }
  PyObject* const x = v[sig.names[0]];
  if (x == nullptr) return py::none();
  switch (self->kind) {
    case kPermute:
      if (v[kAxes] == nullptr) return py::none();
      return fast_permute(x, v[kAxes], arg(v, kOut), arg(v, kThreads), 0, arg(v, kDtype));
    case kConv: {
      if (v[kGroups]) {
        int overflow = 0;
        if (!PyLong_CheckExact(v[kGroups]) || PyLong_AsLongAndOverflow(v[kGroups], &overflow) != 1)
          return py::none();
      }
      const int layout = choice(v[kLayout], "OIHW", "HWIO");
      if (layout < 0) return py::none();
      return fast_permute(x, layout == 0 ? g_conv_oihw : g_conv_hwio, arg(v, kOut), arg(v, kThreads),
                          kMpsDtypes, arg(v, kDtype));
    }
    case kDepthwise: {
      if (v[kInChannels] && v[kInChannels] != Py_None) return py::none();
      const int layout = choice(v[kLayout], "OIHW", "HWCM");
      if (layout < 0) return py::none();
      return fast_permute(x, layout == 0 ? g_dw_oihw : g_dw_hwcm, arg(v, kOut), arg(v, kThreads),
                          kMpsDtypes | kSqueeze, arg(v, kDtype));
    }
    case kFc: return fast_fc(v);
    default: return fast_dense(v);
  }
}

PyObject* fast_path_call(PyObject* self_, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<FastPathObject*>(self_);
  try {
    py::object r = try_fast(self, args, PyVectorcall_NARGS(nargsf), kwnames);
    if (!r.is_none()) return r.release().ptr();
  } catch (...) {
    return set_python_error();
  }
  return PyObject_Vectorcall(self->full, args, nargsf, kwnames);
}

PyObject* fast_path_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject* full;
  const char* kind;
  static const char* keywords[] = {"full", "kind", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Os:FastPath", const_cast<char**>(keywords), &full, &kind))
    return nullptr;
  int k = 0;
  while (k < kKinds && std::strcmp(kind, kKindNames[k]) != 0) ++k;
  if (k == kKinds)
    return PyErr_Format(PyExc_ValueError,
                        "kind must be 'permute', 'conv', 'depthwise', 'fc' or 'dense_reshape', got '%s'", kind);
  if (!PyCallable_Check(full)) return PyErr_Format(PyExc_TypeError, "full must be callable");
  auto* self = reinterpret_cast<FastPathObject*>(type->tp_alloc(type, 0));
  if (!self) return nullptr;
  self->vectorcall = fast_path_call;
  Py_INCREF(full);
  self->full = full;
  self->dict = nullptr;
  self->kind = k;
  return reinterpret_cast<PyObject*>(self);
}

int fast_path_traverse(PyObject* self_, visitproc visit, void* arg) {
  auto* self = reinterpret_cast<FastPathObject*>(self_);
  Py_VISIT(Py_TYPE(self_));
  Py_VISIT(self->full);
  Py_VISIT(self->dict);
  return 0;
}

int fast_path_clear(PyObject* self_) {
  auto* self = reinterpret_cast<FastPathObject*>(self_);
  Py_CLEAR(self->full);
  Py_CLEAR(self->dict);
  return 0;
}

void fast_path_dealloc(PyObject* self_) {
  PyTypeObject* type = Py_TYPE(self_);
  PyObject_GC_UnTrack(self_);
  fast_path_clear(self_);
  type->tp_free(self_);
  Py_DECREF(type);
}

// Like a function stored in a class with staticmethod: no binding. Also what makes
// inspect.isroutine (and so pydoc and help()) treat it as a function.
PyObject* fast_path_get(PyObject* self, PyObject*, PyObject*) {
  Py_INCREF(self);
  return self;
}

PyObject* fast_path_repr(PyObject* self) {
  return PyUnicode_FromFormat("<fast path of %R>", reinterpret_cast<FastPathObject*>(self)->full);
}

// Pickled by name, as a module-level function is.
PyObject* fast_path_reduce(PyObject* self, PyObject*) { return PyObject_GetAttrString(self, "__qualname__"); }

PyMethodDef fast_path_methods[] = {{"__reduce__", fast_path_reduce, METH_NOARGS, nullptr},
                                   {nullptr, nullptr, 0, nullptr}};

PyMemberDef fast_path_members[] = {
    {const_cast<char*>("__vectorcalloffset__"), T_PYSSIZET,
     static_cast<Py_ssize_t>(offsetof(FastPathObject, vectorcall)), READONLY, nullptr},
    {const_cast<char*>("__dictoffset__"), T_PYSSIZET, static_cast<Py_ssize_t>(offsetof(FastPathObject, dict)),
     READONLY, nullptr},
    {nullptr, 0, 0, 0, nullptr}};

PyGetSetDef fast_path_getset[] = {
    {const_cast<char*>("__dict__"), PyObject_GenericGetDict, PyObject_GenericSetDict, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot fast_path_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(fast_path_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(fast_path_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(fast_path_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(fast_path_clear)},
    {Py_tp_call, reinterpret_cast<void*>(PyVectorcall_Call)},
    {Py_tp_descr_get, reinterpret_cast<void*>(fast_path_get)},
    {Py_tp_repr, reinterpret_cast<void*>(fast_path_repr)},
    {Py_tp_methods, fast_path_methods},
    {Py_tp_members, fast_path_members},
    {Py_tp_getset, fast_path_getset},
    {Py_tp_doc, const_cast<char*>("FastPath(full, kind): calls `full`, a public converter, answering its "
                                  "common call in C++ (kind 'permute', 'conv', 'depthwise', 'fc' or "
                                  "'dense_reshape').")},
    {0, nullptr}};

PyType_Spec fast_path_spec = {"mpslayout._core.FastPath", sizeof(FastPathObject), 0,
                              Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
                              fast_path_slots};

PyObject* int_tuple(std::initializer_list<long> values) {
  py::tuple t(values.size());
  size_t i = 0;
  for (long x : values) t[i++] = py::int_(x);
  return t.release().ptr();
}

}  // namespace

void add_fast_path(py::module_& m) {
  for (int i = 0; i < kNames; ++i) g_names[i] = PyUnicode_InternFromString(kNameText[i]);
  g_conv_oihw = int_tuple({0, 2, 3, 1});
  g_conv_hwio = int_tuple({3, 0, 1, 2});
  g_dw_oihw = int_tuple({0, 2, 3});
  g_dw_hwcm = int_tuple({2, 0, 1});
  m.add_object("fast_permute", py::reinterpret_steal<py::object>(
                                   PyCFunction_NewEx(&fast_permute_def, nullptr, m.attr("__name__").ptr())));
  m.def("set_default_threads", [](int n) { g_default_threads.store(n < 0 ? 0 : n); }, py::arg("n"),
        "threads=None for the fast paths (0: unknown, fast paths off).");
  PyObject* type = PyType_FromSpec(&fast_path_spec);
  if (!type) throw py::error_already_set();
  m.add_object("FastPath", py::reinterpret_steal<py::object>(type));
}

}  // namespace mpslayout_py
