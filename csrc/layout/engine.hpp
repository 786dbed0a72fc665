// The one generic routine: copy (and optionally cast) a strided source box into a strided
// destination box, where axes may be split into blocks whose last block is zero padded
// (blocked destination) or partly absent (blocked source). Pure C++17, no Python.
#pragma once
#include <cstdint>
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

// Asked by the calling thread between chunks of a few MiB: true means stop. A plain
// function pointer and its context (no std::function: nothing to allocate or call through
// on the way in).
struct Cancel {
  bool (*poll)(void* ctx) = nullptr;
  void* ctx = nullptr;
};

// Runs boxes on up to `threads` threads (under kParallelBytes on the caller). Returns false
// if `cancel` said stop, in which case the destination is partly written.
bool execute(const std::vector<Box>& boxes, int esrc, int edst, Cast cast, int threads,
             Cancel cancel = {});

// One box with no blocked axes, dims[0, ndim) (ndim <= kMaxAxes), planned on the stack:
// the short path of a small call. Same contract as execute.
bool execute_box(const char* src, char* dst, const Dim* dims, int ndim, int esrc, int edst,
                 Cast cast, int threads, Cancel cancel = {});

// Which kernel a plan runs. Tile plans (a transpose): the direct 8x8 tile into the
// destination, or each panel (one output channel's (kH*kW, I) block of a conv weight)
// staged in an L1/L2 buffer and copied out in address order, with plain stores (kStaged)
// or non-temporal ones (kStream); kPanel makes a whole contiguous panel one work item
// (the Linear-after-flatten's 49x512 per output row, split in bands of 32 rows otherwise)
// and streams it out. Row plans (contiguous rows): kScatter walks the rows in the source's
// order and writes each where it goes (rows of a few hundred bytes that the destination's
// order would gather from far apart: a Dense before a Reshape), a copy's rows of 256 bytes
// or more leaving with non-temporal stores where the ISA has them; kCopyLoop copies an
// in-order box with the ISA's own copy loop instead of libc's memcpy; kStream copies one
// with non-temporal stores (past the last-level cache, as libc's memcpy does). A kernel
// forced for the other kind of plan runs that plan's plain kernel (direct tiles, memcpy
// rows). kAuto picks by shape and size (see engine.cpp);
// MPSLAYOUT_TILE=direct|staged|stream|panel|scatter|copy forces one (tests, benchmarks).
enum class TileKernel { kAuto, kDirect, kStaged, kStream, kPanel, kScatter, kCopyLoop };
TileKernel tile_kernel_override();
void set_tile_kernel_override(TileKernel k);  // not thread-safe: tests and tools only
// "auto", "direct", ...; parse returns false for an unknown name.
const char* tile_kernel_name(TileKernel k);
bool parse_tile_kernel(const char* name, TileKernel* k);

// A straight copy of `bytes` on the calling thread (the bindings' short path for in-order
// boxes): the ISA's copy loop (kCopyLoop) where the planner would pick it, its streamed
// copy (kStream, non-temporal stores, fenced) past stream_bytes(), else memcpy.
void copy_in_order(const char* src, char* dst, int64_t bytes);

// Describes the kernel the planner picks for a request's first box (for tests and bench).
const char* describe_plan(const Request& req);

}  // namespace mpslayout
