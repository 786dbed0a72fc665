// The only file that knows Python: arrays in, bounds checked against the arrays' own
// memory, GIL released, C++ errors mapped to Python exceptions. Validation with friendly
// messages lives in the Python layer; the checks here only keep memory safe.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <functional>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include "layout/engine.hpp"
#include "layout/kernels.hpp"

namespace py = pybind11;
using namespace mpslayout;

namespace {

// Byte range [lo, hi) that an array's elements occupy, relative to its data pointer.
Range array_range(const py::array& a) {
  std::vector<Dim> dims;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) dims.push_back({a.shape(i), a.strides(i), a.strides(i)});
  return touched(dims, true, a.itemsize());
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
    // Refuse any overlap of the two arrays' memory spans (what np.may_share_memory checks):
    // the engine reads and writes in no particular order.
    if (sr.hi > sr.lo && dr.hi > dr.lo) {
      const auto s_lo = reinterpret_cast<uintptr_t>(s0) + sr.lo, s_hi = reinterpret_cast<uintptr_t>(s0) + sr.hi;
      const auto d_lo = reinterpret_cast<uintptr_t>(d0) + dr.lo, d_hi = reinterpret_cast<uintptr_t>(d0) + dr.hi;
      if (s_lo < d_hi && d_lo < s_hi) throw py::value_error("out overlaps the input; pass a separate array");
    }
    for (const Box& b : boxes) {
      if (!b.zero) check_inside(b.dims, true, b.src - s0, req.esrc, sr, "source");
      check_inside(b.dims, false, b.dst - d0, req.edst, dr, "destination");
    }
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  } catch (const std::overflow_error& e) {
    throw py::value_error(e.what());
  }
  // Ctrl-C: every 50 ms the calling thread takes the GIL back for a moment and lets Python
  // run its signal handlers; a KeyboardInterrupt stops the conversion within one chunk.
  auto last = std::chrono::steady_clock::now();
  std::function<bool()> cancelled = [&last]() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last < std::chrono::milliseconds(50)) return false;
    last = now;
    py::gil_scoped_acquire gil;
    return PyErr_CheckSignals() != 0;
  };
  bool finished;
  {
    py::gil_scoped_release release;
    finished = execute(boxes, req.esrc, req.edst, req.cast, threads < 1 ? 1 : threads, cancelled);
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
        "Name of the kernel shape the planner picks: 'row', 'tile', 'strided' or 'empty'.");
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
