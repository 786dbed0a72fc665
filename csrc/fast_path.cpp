// FastPath: a public converter (permute, conv_weights, depthwise_weights) as a callable whose
// common call runs no Python bytecode. It parses the call's arguments in C++, hands the
// common case to fast_permute, and passes every other call, unchanged, to the Python
// function it wraps (the full path, which checks and explains). Why: with cold caches, one
// Python frame (its bytecode, globals and the interpreter's handlers, all from memory) took
// about 12 us, more than the whole copy of a small weight (bench/README.md, "Small calls").
#include "fast_path.hpp"

#include <structmember.h>

#include <cstring>

namespace py = pybind11;

namespace mpslayout_py {
namespace {

enum Kind : int { kPermute, kConv, kDepthwise };

struct FastPathObject {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  PyObject* full;  // the Python function: the full path
  PyObject* dict;  // __wrapped__, __doc__, __name__, ... (functools.update_wrapper)
  int kind;
};

// Argument names, interned once: keyword names from Python code are interned too, so a
// pointer compare almost always decides.
enum Name { kX, kW, kAxes, kLayout, kGroups, kInChannels, kDtype, kOut, kThreads, kNames };
const char* const kNameText[kNames] = {"x", "w", "axes", "layout", "groups", "in_channels",
                                       "dtype", "out", "threads"};
PyObject* g_names[kNames];
// axes per layout: conv OIHW, HWIO; depthwise OIHW, HWCM
PyObject *g_conv_oihw, *g_conv_hwio, *g_dw_oihw, *g_dw_hwcm;

int name_index(PyObject* key) {
  for (int i = 0; i < kNames; ++i)
    if (key == g_names[i]) return i;
  for (int i = 0; i < kNames; ++i)
    if (PyUnicode_Check(key) && PyUnicode_Compare(key, g_names[i]) == 0) return i;
  return -1;
}

bool is_str(PyObject* v, const char* text) {
  return PyUnicode_CheckExact(v) && PyUnicode_CompareWithASCIIString(v, text) == 0;
}

// The fast path's answer: a new reference, Py_None for "take the full path", or nullptr
// with an exception set.
PyObject* try_fast(const FastPathObject* self, PyObject* const* args, Py_ssize_t nargs,
                   PyObject* kwnames) {
  PyObject* v[kNames] = {};
  const int first = self->kind == kPermute ? kX : kW;
  const Py_ssize_t npos = self->kind == kPermute ? 2 : 1;
  if (nargs > npos) Py_RETURN_NONE;
  v[first] = nargs > 0 ? args[0] : nullptr;
  if (nargs > 1) v[kAxes] = args[1];
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < nkw; ++i) {
    const int k = name_index(PyTuple_GET_ITEM(kwnames, i));
    // an unknown or repeated name, or one of the other kind's: the full path says what
    if (k < 0 || v[k] != nullptr) Py_RETURN_NONE;
    v[k] = args[nargs + i];
  }
  if (v[self->kind == kPermute ? kW : kX]) Py_RETURN_NONE;  // the other kind's name
  PyObject* const x = v[first];
  if (x == nullptr) Py_RETURN_NONE;
  PyObject* axes = nullptr;
  long mode = 0;
  switch (self->kind) {
    case kPermute:
      if (v[kLayout] || v[kGroups] || v[kInChannels] || v[kAxes] == nullptr) Py_RETURN_NONE;
      axes = v[kAxes];
      break;
    case kConv:
      if (v[kAxes] || v[kInChannels]) Py_RETURN_NONE;
      if (v[kGroups]) {
        int overflow = 0;
        if (!PyLong_CheckExact(v[kGroups]) || PyLong_AsLongAndOverflow(v[kGroups], &overflow) != 1)
          Py_RETURN_NONE;
      }
      if (v[kLayout] == nullptr || is_str(v[kLayout], "OIHW")) axes = g_conv_oihw;
      else if (is_str(v[kLayout], "HWIO")) axes = g_conv_hwio;
      else Py_RETURN_NONE;
      mode = kMpsDtypes;
      break;
    default:  // kDepthwise
      if (v[kAxes] || v[kGroups] || (v[kInChannels] && v[kInChannels] != Py_None)) Py_RETURN_NONE;
      if (v[kLayout] == nullptr || is_str(v[kLayout], "OIHW")) axes = g_dw_oihw;
      else if (is_str(v[kLayout], "HWCM")) axes = g_dw_hwcm;
      else Py_RETURN_NONE;
      mode = kMpsDtypes | kSqueeze;
      break;
  }
  auto arg = [&](int k) { return py::handle(v[k] ? v[k] : Py_None); };
  try {
    return fast_permute(x, axes, arg(kOut), arg(kThreads), mode, arg(kDtype)).release().ptr();
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

PyObject* fast_path_call(PyObject* self_, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<FastPathObject*>(self_);
  PyObject* r = try_fast(self, args, PyVectorcall_NARGS(nargsf), kwnames);
  if (r != Py_None) return r;
  Py_DECREF(r);
  return PyObject_Vectorcall(self->full, args, nargsf, kwnames);
}

PyObject* fast_path_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  PyObject* full;
  const char* kind;
  static const char* keywords[] = {"full", "kind", nullptr};
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Os:FastPath", const_cast<char**>(keywords), &full, &kind))
    return nullptr;
  int k;
  if (std::strcmp(kind, "permute") == 0) k = kPermute;
  else if (std::strcmp(kind, "conv") == 0) k = kConv;
  else if (std::strcmp(kind, "depthwise") == 0) k = kDepthwise;
  else return PyErr_Format(PyExc_ValueError, "kind must be 'permute', 'conv' or 'depthwise', got %R",
                           PyTuple_GET_ITEM(args, 1));
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
PyObject* fast_path_reduce(PyObject* self, PyObject*) {
  return PyObject_GetAttrString(self, "__qualname__");
}

PyMethodDef fast_path_methods[] = {
    {"__reduce__", fast_path_reduce, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyMemberDef fast_path_members[] = {
    {const_cast<char*>("__vectorcalloffset__"), T_PYSSIZET,
     static_cast<Py_ssize_t>(offsetof(FastPathObject, vectorcall)), READONLY, nullptr},
    {const_cast<char*>("__dictoffset__"), T_PYSSIZET,
     static_cast<Py_ssize_t>(offsetof(FastPathObject, dict)), READONLY, nullptr},
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
    {Py_tp_doc, const_cast<char*>(
        "FastPath(full, kind): calls `full`, a public converter, answering its common call "
        "in C++ (kind 'permute', 'conv' or 'depthwise').")},
    {0, nullptr}};

PyType_Spec fast_path_spec = {
    "mpslayout._core.FastPath", sizeof(FastPathObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL, fast_path_slots};

py::object int_tuple(std::initializer_list<long> values) {
  py::tuple t(values.size());
  size_t i = 0;
  for (long x : values) t[i++] = py::int_(x);
  return std::move(t);
}

}  // namespace

void add_fast_path_type(py::module_& m) {
  for (int i = 0; i < kNames; ++i) g_names[i] = PyUnicode_InternFromString(kNameText[i]);
  g_conv_oihw = int_tuple({0, 2, 3, 1}).release().ptr();
  g_conv_hwio = int_tuple({3, 0, 1, 2}).release().ptr();
  g_dw_oihw = int_tuple({0, 2, 3}).release().ptr();
  g_dw_hwcm = int_tuple({2, 0, 1}).release().ptr();
  PyObject* type = PyType_FromSpec(&fast_path_spec);
  if (!type) throw py::error_already_set();
  m.add_object("FastPath", py::reinterpret_steal<py::object>(type));
}

}  // namespace mpslayout_py
