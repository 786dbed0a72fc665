// The module: arrays in, bounds checked against the arrays' own memory, GIL released, C++
// errors mapped to Python exceptions. With fast_call.cpp and fast_path.cpp (the
// converters' common calls), the only files that know Python. Validation with friendly
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

#include "python/arrays.hpp"
#include "python/fast_call.hpp"
#include "python/fast_path.hpp"
#include "layout/engine.hpp"
#include "layout/kernels.hpp"

namespace py = pybind11;
using namespace mpslayout;

namespace mpslayout_py MPSL_PY_HIDDEN {

// Byte range [lo, hi) that an array's elements occupy, relative to its data pointer.
MPSL_HOT Range array_range(const py::array& a) {
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

// True if the memory spans of two arrays overlap (what np.may_share_memory checks), given
// their byte ranges from array_range.
MPSL_HOT bool spans_overlap(const py::array& src, const Range& sr, const py::array& dst, const Range& dr) {
  if (sr.hi <= sr.lo || dr.hi <= dr.lo) return false;
  const auto s0 = reinterpret_cast<uintptr_t>(src.data()), d0 = reinterpret_cast<uintptr_t>(dst.data());
  return s0 + sr.lo < d0 + dr.hi && d0 + dr.lo < s0 + sr.hi;
}

}  // namespace mpslayout_py

namespace {
using namespace mpslayout_py;
using BoundTuple = std::tuple<int, int, int64_t, int64_t, bool>;

void run_boxes(const Request& req, const std::vector<Box>& boxes, int threads);

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

}  // namespace

MPSL_HOT void mpslayout_py::run_box(const char* src, char* dst, const Dim* dims, int ndim, int esrc, int edst,
                           Cast cast, int threads, int64_t bytes) {
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

namespace {

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
  mpslayout_py::add_fast_call(m);
  mpslayout_py::add_fast_path(m);
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
