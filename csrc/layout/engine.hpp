// The one generic routine: copy (and optionally cast) a strided source box into a strided
// destination box, where axes may be split into blocks whose last block is zero padded
// (blocked destination) or partly absent (blocked source). Pure C++17, no Python.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>
#include "cast.hpp"
#include "shape.hpp"

namespace mpslayout {

// Axes `outer` and `inner` of a request are one logical axis of `extent` elements split
// as outer * block + inner. Points past the extent are zero-filled in the destination
// (zero_pad) or do not exist in the destination and are skipped (!zero_pad).
struct Bound {
  int outer, inner;
  int64_t block, extent;
  bool zero_pad;
};

struct Request {
  const char* src;
  char* dst;
  int esrc, edst;  // element sizes, bytes
  Cast cast;
  std::vector<Dim> dims;
  std::vector<Bound> bounds;
};

// A box the planner runs: a copy, or a zero fill of the destination (src unused).
struct Box {
  const char* src;
  char* dst;
  std::vector<Dim> dims;
  bool zero;
};

// Bytes moved (read + written) below which execute() stays on the calling thread: waking
// a pool thread took ~50-80 us on the 2-core VM measured, about what 1.6 MB of cold
// transpose takes.
constexpr int64_t kParallelBytes = 4 << 20;

// Splits a request into plain boxes. Throws std::invalid_argument on inconsistent bounds.
std::vector<Box> decompose(const Request& req);

// Runs boxes on up to `threads` threads (under kParallelBytes on the caller). The calling
// thread polls `cancelled` (if set) between chunks of a few MiB; returns false if it said
// stop, in which case the destination is partly written.
bool execute(const std::vector<Box>& boxes, int esrc, int edst, Cast cast, int threads,
             const std::function<bool()>& cancelled = {});

// Describes the kernel the planner picks for a request's first box (for tests and bench).
const char* describe_plan(const Request& req);

}  // namespace mpslayout
