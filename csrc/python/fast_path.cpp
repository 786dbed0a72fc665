// FastPath: a public converter (permute, conv_weights, depthwise_weights, fc_weights,
// dense_reshape) as a callable that parses the call's arguments here, answers the common
// case through fast_call.hpp, and passes every other call, unchanged, to the Python
// function it wraps. Why: with cold caches one Python frame (its bytecode, its globals and
// the interpreter's handlers, all from memory) took about 12 us, and dense_reshape's
// checks about 70 us, against 20 us for copying a small weight (bench/README.md, "Small
// calls").
#include "python/fast_path.hpp"

#include <structmember.h>

#include <cstring>

#include "python/fast_call.hpp"

namespace py = pybind11;
using namespace mpslayout;

namespace mpslayout_py MPSL_PY_HIDDEN {
namespace {

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

// a * b * c == n, without overflow (a, b, c >= 1): a crafted shape must not wrap around to
// the array's size and describe a box far outside it.
bool product_is(int64_t n, int64_t a, int64_t b, int64_t c) {
  return n % a == 0 && (n / a) % b == 0 && n / a / b == c;
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
    if (!product_is(n, c, h, w)) return py::none();
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
  if (!product_is(n, h, w, c)) return py::none();
  int64_t s[3];
  neuron_strides(in.a.strides(n_ax), h, w, c, order, s);
  Dim dims[4] = {{h, s[0], 0}, {w, s[1], 0}, {c, s[2], 0}, {i, in.a.strides(i_ax), 0}};
  const py::ssize_t shape[2] = {n, i};
  py::object weights = fast_run(in, dims, 4, shape, 2, arg(v, kOut));
  if (weights.is_none()) return weights;
  return py::make_tuple(weights, py::none());
}

// The fast path's answer: an object, None for "take the full path", or an error (thrown).
MPSL_HOT py::object try_fast(const FastPathObject* self, PyObject* const* args, Py_ssize_t nargs,
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

MPSL_HOT PyObject* fast_path_call(PyObject* self_, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
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
  PyObject* type = PyType_FromSpec(&fast_path_spec);
  if (!type) throw py::error_already_set();
  m.add_object("FastPath", py::reinterpret_steal<py::object>(type));
}

}  // namespace mpslayout_py
