// The only file that knows Python: arrays in, bounds checked against the arrays' own
// memory, GIL released, C++ errors mapped to Python exceptions. Validation with friendly
// messages lives in the Python layer; the checks here only keep memory safe.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include "fast_path.hpp"
#include "layout/engine.hpp"
#include "layout/kernels.hpp"

namespace py = pybind11;
using namespace mpslayout;

namespace {

// Byte range [lo, hi) that an array's elements occupy, relative to its data pointer.
Range array_range(const py::array& a) {
  Dim dims[kMaxAxes];
  const int n = static_cast<int>(std::min<py::ssize_t>(a.ndim(), kMaxAxes));
  for (int i = 0; i < n; ++i) dims[i] = {a.shape(i), a.strides(i), a.strides(i)};
  return touched(dims, n, true, a.itemsize());
}

void check_inside(const std::vector<Dim>& dims, bool source, int64_t offset, int64_t esize,
                  const Range& allowed, const char* what) {
  Range r = touched(dims, source, esize);
  if (r.hi == r.lo) return;  // empty box touches nothing
  r.lo = checked_add(r.lo, offset);
  r.hi = checked_add(r.hi, offset);
  if (r.lo < allowed.lo || r.hi > allowed.hi)
    throw py::index_error(std::string("internal error: the copy would reach outside the ") + what +
                          " array; nothing was written");
}

using BoundTuple = std::tuple<int, int, int64_t, int64_t, bool>;

void run_boxes(const Request& req, const std::vector<Box>& boxes, int threads);

// True if the memory spans of two arrays overlap (what np.may_share_memory checks), given
// their byte ranges from array_range.
bool spans_overlap(const py::array& src, const Range& sr, const py::array& dst, const Range& dr) {
  if (sr.hi <= sr.lo || dr.hi <= dr.lo) return false;
  const auto s0 = reinterpret_cast<uintptr_t>(src.data()), d0 = reinterpret_cast<uintptr_t>(dst.data());
  return s0 + sr.lo < d0 + dr.hi && d0 + dr.lo < s0 + sr.hi;
}

Request make_request(const py::array& src, py::array& dst, const std::vector<int64_t>& shape,
                     const std::vector<int64_t>& src_strides, std::vector<int64_t> dst_strides,
                     int64_t src_offset, int64_t dst_offset, const std::vector<BoundTuple>& bounds,
                     int cast_code) {
  if (dst_strides.empty() && !shape.empty()) {  // C-contiguous destination box
    dst_strides.resize(shape.size());
    int64_t step = dst.itemsize();
    for (size_t i = shape.size(); i-- > 0;) {
      dst_strides[i] = step;
      step = checked_mul(step, std::max<int64_t>(shape[i], 1));
    }
  }
  if (shape.size() != src_strides.size() || shape.size() != dst_strides.size())
    throw py::value_error("shape and strides must have the same length");
  if (shape.size() > 64) throw py::value_error("too many axes");
  if (cast_code < 0 || cast_code > static_cast<int>(Cast::BF16toF32)) throw py::value_error("unknown cast");
  const Cast cast = static_cast<Cast>(cast_code);
  const int esrc = static_cast<int>(src.itemsize()), edst = static_cast<int>(dst.itemsize());
  if (cast == Cast::None) {
    if (esrc != edst || (esrc != 1 && esrc != 2 && esrc != 4 && esrc != 8))
      throw py::type_error("element sizes must be equal and 1, 2, 4 or 8 bytes");
  } else if (esrc != cast_src_size(cast) || edst != cast_dst_size(cast)) {
    throw py::type_error("element sizes do not match the cast");
  }
  Request req{static_cast<const char*>(src.data()) + src_offset,
              static_cast<char*>(dst.mutable_data()) + dst_offset,
              esrc, edst, cast, {}, {}};
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) throw py::value_error("negative extent");
    req.dims.push_back({shape[i], src_strides[i], dst_strides[i]});
  }
  std::vector<bool> used(shape.size(), false);
  for (const auto& t : bounds) {
    Bound b{std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)};
    const int n = static_cast<int>(shape.size());
    if (b.outer < 0 || b.outer >= n || b.inner < 0 || b.inner >= n || used[b.outer] || used[b.inner])
      throw py::value_error("invalid blocked axis description");
    used[b.outer] = used[b.inner] = true;
    req.bounds.push_back(b);
  }
  return req;
}

void copy(const py::array& src, py::array& dst, const std::vector<int64_t>& shape,
          const std::vector<int64_t>& src_strides, const std::vector<int64_t>& dst_strides,
          int64_t src_offset, int64_t dst_offset, const std::vector<BoundTuple>& bounds,
          int cast_code, int threads) {
  if (!dst.writeable()) throw py::value_error("destination is read-only");
  Request req = make_request(src, dst, shape, src_strides, dst_strides, src_offset, dst_offset,
                             bounds, cast_code);
  std::vector<Box> boxes;
  try {
    boxes = decompose(req);
    const Range sr = array_range(src), dr = array_range(dst);
    const char* s0 = static_cast<const char*>(src.data());
    char* d0 = static_cast<char*>(dst.mutable_data());
    // Refuse any overlap of the two arrays' memory spans: the engine reads and writes in no
    // particular order.
    if (spans_overlap(src, sr, dst, dr)) throw py::value_error("out overlaps the input; pass a separate array");
    for (const Box& b : boxes) {
      if (!b.zero) check_inside(b.dims, true, b.src - s0, req.esrc, sr, "source");
      check_inside(b.dims, false, b.dst - d0, req.edst, dr, "destination");
    }
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  } catch (const std::overflow_error& e) {
    throw py::value_error(e.what());
  }
  run_boxes(req, boxes, threads);
}

// Ctrl-C while the GIL is released: every 50 ms the calling thread takes the GIL back for
// a moment and lets Python run its signal handlers; a KeyboardInterrupt stops the
// conversion within one chunk.
struct SignalPoll {
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  static bool poll(void* ctx) {
    auto& self = *static_cast<SignalPoll*>(ctx);
    const auto now = std::chrono::steady_clock::now();
    if (now - self.last < std::chrono::milliseconds(50)) return false;
    self.last = now;
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
  }
};

// Copies below this many bytes (read + written) keep the GIL: they take microseconds, less
// than handing the GIL over and back costs a cold call.
constexpr int64_t kKeepGilBytes = int64_t(1) << 20;

// Runs checked boxes with the GIL released (see SignalPoll).
void run_boxes(const Request& req, const std::vector<Box>& boxes, int threads) {
  SignalPoll signals;
  bool finished;
  {
    py::gil_scoped_release release;
    finished = execute(boxes, req.esrc, req.edst, req.cast, threads < 1 ? 1 : threads,
                       Cancel{&SignalPoll::poll, &signals});
  }
  if (!finished) throw py::error_already_set();
}

// One plain box (the fast path's), planned on the stack.
void run_box(const char* src, char* dst, const Dim* dims, int ndim, int esrc, int edst, Cast cast,
             int threads, int64_t bytes) {
  if (bytes < kKeepGilBytes) {
    execute_box(src, dst, dims, ndim, esrc, edst, cast, 1);
    return;
  }
  SignalPoll signals;
  bool finished;
  {
    py::gil_scoped_release release;
    finished = execute_box(src, dst, dims, ndim, esrc, edst, cast, threads,
                           Cancel{&SignalPoll::poll, &signals});
  }
  if (!finished) throw py::error_already_set();
}

std::string plan(const py::array& src, py::array& dst, const std::vector<int64_t>& shape,
                 const std::vector<int64_t>& src_strides, const std::vector<int64_t>& dst_strides,
                 int64_t src_offset, int64_t dst_offset, const std::vector<BoundTuple>& bounds,
                 int cast_code) {
  Request req = make_request(src, dst, shape, src_strides, dst_strides, src_offset, dst_offset,
                             bounds, cast_code);
  try {
    return describe_plan(req);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// Default thread count for fast_permute's threads=None; 0 until Python has resolved it.
std::atomic<int> g_default_threads{0};

bool native_order(char byteorder) {
  const uint16_t probe = 1;
  const bool little = *reinterpret_cast<const char*>(&probe) == 1;
  return byteorder == '=' || byteorder == '|' || byteorder == (little ? '<' : '>');
}

// numpy type numbers fast_permute moves as they are (bool, integers, float16/32/64,
// complex64), and the subset MPS weights keep (uint8, float16, float32).
constexpr int kUByte = 2, kFloat = 11, kDouble = 12, kCFloat = 14, kHalf = 23;
bool plain_type(int num, bool mps) {
  if (mps) return num == kFloat || num == kHalf || num == kUByte;
  return (num >= 0 && num <= kDouble) || num == kCFloat || num == kHalf;
}

// The fused cast from type number `from` to `to` fast_permute runs, if it is one.
bool fast_cast(int from, int to, Cast& cast) {
  if (from == kFloat && to == kHalf) cast = Cast::F32toF16;
  else if (from == kHalf && to == kFloat) cast = Cast::F16toF32;
  else if (from == kDouble && to == kFloat) cast = Cast::F64toF32;
  else return false;
  return true;
}

}  // namespace

namespace mpslayout_py {

// The common call of permute and the MPS converters in one step, for small tensors whose
// time is mostly interpreter overhead: an exact ndarray of a plain native dtype, axes a
// tuple or list of ints, dtype None, the input's own or a fused-cast target, out None or
// an exactly matching array, threads None or an int. Anything else returns None, and the
// caller takes the full path, which checks and explains. `mode` bit 1: the MPS
// converters' dtypes only, float64 becoming float32 when dtype is None; bit 2: axes may
// leave out axes of extent 1 (squeezed away, as depthwise_weights does).
py::object fast_permute(py::handle x, py::handle axes, py::handle out, py::handle threads,
                        long mode, py::handle dtype) {
  const bool mps = mode & kMpsDtypes;
  auto& api = py::detail::npy_api::get();
  if (Py_TYPE(x.ptr()) != api.PyArray_Type_) return py::none();
  const auto a = py::reinterpret_borrow<py::array>(x);
  const py::ssize_t nd = a.ndim();
  PyObject* ax = axes.ptr();
  const bool tuple = PyTuple_CheckExact(ax);
  if (nd > 8 || !(tuple || PyList_CheckExact(ax))) return py::none();
  // the MPS converters may leave unit axes out (depthwise: (C, 1, kH, kW) -> (C, kH, kW))
  const py::ssize_t nout = PySequence_Fast_GET_SIZE(ax);
  if (nout != nd && !((mode & kSqueeze) && nout < nd)) return py::none();
  const py::dtype dt = a.dtype();
  const int64_t esize = dt.itemsize();
  const int num = dt.num();
  if (!native_order(dt.byteorder()) || (esize != 1 && esize != 2 && esize != 4 && esize != 8))
    return py::none();
  Cast cast = Cast::None;
  py::dtype out_dt = dt;
  if (dtype.is_none()) {
    if (mps && num == kDouble) {
      cast = Cast::F64toF32;
      out_dt = py::dtype(kFloat);
    } else if (!plain_type(num, mps)) {
      return py::none();
    }
  } else {
    if (!plain_type(num, mps) && !(mps && num == kDouble)) return py::none();
    PyObject* descr = nullptr;  // any spelling numpy takes: np.float16, "float16", a dtype
    if (!api.PyArray_DescrConverter_(dtype.ptr(), &descr) || descr == nullptr) {
      PyErr_Clear();
      return py::none();
    }
    out_dt = py::reinterpret_steal<py::dtype>(descr);
    if (!native_order(out_dt.byteorder())) return py::none();
    if (!api.PyArray_EquivTypes_(dt.ptr(), out_dt.ptr()) && !fast_cast(num, out_dt.num(), cast))
      return py::none();
  }
  int64_t n_threads;
  if (threads.is_none()) {
    n_threads = g_default_threads.load(std::memory_order_relaxed);
    if (n_threads == 0) return py::none();
  } else {
    if (!PyLong_CheckExact(threads.ptr())) return py::none();
    int overflow = 0;
    n_threads = PyLong_AsLongLongAndOverflow(threads.ptr(), &overflow);
    if (overflow || n_threads < 1 || n_threads > 1024) return py::none();
  }
  const int64_t edst = cast == Cast::None ? esize : cast_dst_size(cast);
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
  py::object result;
  if (out.is_none()) {
    result = py::array(out_dt, std::vector<py::ssize_t>(shape, shape + nout));
  } else {
    if (Py_TYPE(out.ptr()) != api.PyArray_Type_) return py::none();
    const auto o = py::reinterpret_borrow<py::array>(out);
    constexpr int kCContiguous = 0x1, kWriteable = 0x400;
    const int flags = py::detail::array_proxy(o.ptr())->flags;
    if (!(flags & kCContiguous) || !(flags & kWriteable) || o.ndim() != nout ||
        !api.PyArray_EquivTypes_(out_dt.ptr(), o.dtype().ptr()))
      return py::none();
    for (py::ssize_t i = 0; i < nout; ++i)
      if (o.shape(i) != shape[i]) return py::none();
    if (spans_overlap(a, array_range(a), o, array_range(o))) return py::none();
    result = o;
  }
  const char* src = static_cast<const char*>(a.data());
  char* dst = static_cast<char*>(py::detail::array_proxy(result.ptr())->data);
  // C-contiguous destination strides; `in_order`: the source already is in that order
  // (a 1x1 or depthwise kernel, a permutation of unit axes), a straight copy
  int64_t step = edst, src_step = esize;
  bool in_order = cast == Cast::None;
  for (py::ssize_t i = nout; i-- > 0;) {
    Dim& d = dims[i];
    d.ds = step;
    step *= std::max<int64_t>(d.n, 1);
    if (d.n != 1) {
      in_order = in_order && d.ss == src_step;
      src_step *= d.n;
    }
  }
  const int64_t elements = a.size();
  if (in_order && 2 * elements * esize < kParallelBytes) {  // small enough for one thread: a copy
    copy_in_order(src, dst, elements * esize);
  } else {
    run_box(src, dst, dims, static_cast<int>(nout), static_cast<int>(esize), static_cast<int>(edst),
            cast, static_cast<int>(n_threads), elements * (esize + edst));
  }
  return result;
}

}  // namespace mpslayout_py

namespace {
using mpslayout_py::fast_permute;

// fast_permute as a plain METH_FASTCALL function: its whole point is a short path from
// Python, and pybind11's general dispatcher is a large share of a cold small call.
PyObject* fast_permute_raw(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "fast_permute(x, axes, out, threads, mode, dtype)");
    return nullptr;
  }
  try {
    const long mode = PyLong_AsLong(args[4]);
    if (mode == -1 && PyErr_Occurred()) return nullptr;
    return fast_permute(args[0], args[1], args[2], args[3], mode, args[5]).release().ptr();
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

PyMethodDef fast_permute_def = {
    "fast_permute", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_permute_raw)),
    METH_FASTCALL,
    "fast_permute(x, axes, out, threads, mode, dtype): np.ascontiguousarray(x.transpose(axes)) "
    "for the common call, else None (take the full path). mode: 0 any plain dtype, 1 MPS "
    "weight dtypes, 3 MPS dtypes and unit axes may be left out of axes."};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "mpslayout's C++ permutation engine (use the functions in mpslayout instead).";
  m.def("copy", &copy, py::arg("src"), py::arg("dst"), py::arg("shape"), py::arg("src_strides"),
        py::arg("dst_strides"), py::arg("src_offset") = 0, py::arg("dst_offset") = 0,
        py::arg("bounds") = std::vector<BoundTuple>{}, py::arg("cast") = 0, py::arg("threads") = 1,
        "Copy the box `shape` (byte strides on both sides) from src into dst, casting per `cast`.");
  m.def("plan", &plan, py::arg("src"), py::arg("dst"), py::arg("shape"), py::arg("src_strides"),
        py::arg("dst_strides"), py::arg("src_offset") = 0, py::arg("dst_offset") = 0,
        py::arg("bounds") = std::vector<BoundTuple>{}, py::arg("cast") = 0,
        "Name of the kernel the planner picks: 'row', 'scatter' (rows walked in the source's order), 'copy' "
        "(the ISA's copy loop), 'tile' (direct 8x8 tiles), 'staged' (panels built in a "
        "buffer, copied out), 'stream' (the same with non-temporal stores), 'panel' (whole "
        "panels as work items, streamed), 'strided' or 'empty'.");
  m.def("set_tile_kernel", [](const std::string& name) {
    TileKernel k;
    if (!parse_tile_kernel(name.c_str(), &k))
      throw py::value_error("tile kernel must be 'auto', 'direct', 'staged', 'stream', 'panel', "
                            "'scatter' or 'copy'");
    set_tile_kernel_override(k);
  }, py::arg("name"), "Force a kernel (engine.hpp, TileKernel; tests and benchmarks; not thread-safe).");
  m.def("tile_kernel", [] { return std::string(tile_kernel_name(tile_kernel_override())); },
        "The forced kernel, or 'auto'.");
  m.add_object("fast_permute", py::reinterpret_steal<py::object>(
                                   PyCFunction_NewEx(&fast_permute_def, nullptr, m.attr("__name__").ptr())));
  mpslayout_py::add_fast_path_type(m);
  m.def("set_default_threads", [](int n) { g_default_threads.store(n < 0 ? 0 : n); },
        py::arg("n"), "threads=None for fast_permute (0: unknown, fast path off).");
  m.def("isa", [] { return std::string(kernels().isa); }, "Instruction set in use.");
  m.def("available_isas", [] {
    int n = 0;
    const char* const* names = available_isas(&n);
    std::vector<std::string> out(names, names + n);
    return out;
  }, "Instruction sets this build can run on this CPU, best last.");
  m.def("hardware_threads", [] { return static_cast<int>(std::thread::hardware_concurrency()); });
  m.attr("CAST_NONE") = static_cast<int>(Cast::None);
  m.attr("CAST_F32_F16") = static_cast<int>(Cast::F32toF16);
  m.attr("CAST_F16_F32") = static_cast<int>(Cast::F16toF32);
  m.attr("CAST_F64_F32") = static_cast<int>(Cast::F64toF32);
  m.attr("CAST_F32_BF16") = static_cast<int>(Cast::F32toBF16);
  m.attr("CAST_BF16_F32") = static_cast<int>(Cast::BF16toF32);
#ifdef MPSLAYOUT_VERSION
  m.attr("__version__") = MPSLAYOUT_VERSION;
#endif
}
