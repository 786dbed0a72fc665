// Plan -> macro-kernel -> micro-kernel. The plan puts a box in canonical form and picks
// one of three shapes of work: contiguous rows (straight copy or cast), a 2-D transpose
// between the source's fastest axis and the destination's, or a strided walk. The outer
// axes are flattened into work items that the thread pool shares out.
#include "engine.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include "kernels.hpp"
#include "threads.hpp"

#include <atomic>
#include <thread>

namespace mpslayout {

namespace {

constexpr int64_t kItemElements = 16 * 1024;    // elements per work item (about L1..L2)
constexpr int64_t kCancelBytes = int64_t(4) << 20;  // bytes between two cancel polls
// Tile plans whose bands are contiguous destination panels (conv output channels) of at
// most kStreamPanelBytes (the kernels' scratch buffer, rows padded by a line), in
// destinations from kStreamMinBytes up, stage each panel and stream it out (kStream), the
// next panel's source prefetched meanwhile. A fused cast does so only up to
// kStreamMaxBytes: past it a plain store's line stays in the last-level cache and is not
// written back within the call, which non-temporal stores always are: the direct tile
// measured faster there (up to stream_bytes(), where nothing fits any more). Plain copies
// measured faster streamed at every size (the prefetch makes the difference).
constexpr int64_t kStreamPanelBytes = 192 * 1024;
constexpr int64_t kStreamMinBytes = int64_t(64) << 10, kStreamMaxBytes = int64_t(8) << 20;
// Row plans: kScatter (rows read in the source's order, each written where it goes) from
// kScatterMinBytes of output (below, the rows are in cache or too few to matter). Rows of
// kStreamRowMinBytes or more that the ISA copies with non-temporal stores take it in every
// order and length: no destination line is read first, and the write streams thrash no
// cache (the DCGAN rows 1.1-1.2x memcpy's time -> 0.75x, cold). Shorter rows, casts and the
// other ISAs (plain stores) take it for rows of up to kScatterMaxRowBytes (longer ones the
// hardware prefetcher follows on its own) when the source's order steps along a shorter
// axis than the destination's: the side walked out of order is then a few write streams,
// each in order, rather than one read stride of 6.4 kB (measured both ways).
// kCopyLoop for in-order copies below kCopyLoopMaxBytes (past it libc's memcpy switches to
// non-temporal stores, which the loop has not).
constexpr int64_t kScatterMinBytes = int64_t(64) << 10, kCopyLoopMaxBytes = int64_t(4) << 20;
constexpr int64_t kScatterMaxRowBytes = 4096, kStreamRowMinBytes = 256;
// Destinations past the last-level cache get non-temporal stores. MPSLAYOUT_STREAM_BYTES
// overrides the threshold (for benchmarking the two store paths against each other).
int64_t stream_bytes() {
  static const int64_t value = [] {
    const char* env = std::getenv("MPSLAYOUT_STREAM_BYTES");
    return env && *env ? std::max<int64_t>(0, std::atoll(env)) : int64_t(48) << 20;
  }();
  return value;
}     // destinations past the LLC: non-temporal stores

int64_t iabs(int64_t v) { return v < 0 ? -v : v; }

void split(const Request& req, std::vector<Box>& out, Box box, size_t k) {
  if (k == req.bounds.size()) {
    out.push_back(std::move(box));
    return;
  }
  const Bound& b = req.bounds[k];
  const Dim outer = box.dims[b.outer], inner = box.dims[b.inner];
  const int64_t full = b.extent / b.block;       // complete blocks
  const int64_t rest = b.extent - full * b.block;  // elements in the partial block
  const int64_t blocks = full + (rest ? 1 : 0);
  if (outer.n != blocks || inner.n != b.block)
    throw std::invalid_argument("blocked axis extents disagree with block size and extent");
  if (rest == 0) {
    split(req, out, std::move(box), k + 1);
    return;
  }
  if (box.zero && b.zero_pad) {  // zero box: a padded axis is zero over its whole length
    split(req, out, std::move(box), k + 1);
    return;
  }
  if (full > 0) {
    Box part = box;
    part.dims[b.outer].n = full;
    split(req, out, std::move(part), k + 1);
  }
  Box tail = box;
  tail.src += full * outer.ss;
  tail.dst += full * outer.ds;
  tail.dims[b.outer].n = 1;
  tail.dims[b.inner].n = rest;
  split(req, out, std::move(tail), k + 1);
  if (b.zero_pad && !box.zero) {
    Box pad = box;
    pad.zero = true;
    pad.src += full * outer.ss + rest * inner.ss;
    pad.dst += full * outer.ds + rest * inner.ds;
    pad.dims[b.outer].n = 1;
    pad.dims[b.inner].n = b.block - rest;
    split(req, out, std::move(pad), k + 1);
  }
}

enum class Shape { Row, Tile, Strided };

// Everything run_items needs, in fixed arrays: a plan lives on the caller's stack.
struct Plan {
  Shape shape = Shape::Row;
  const char* src = nullptr;
  char* dst = nullptr;
  Dim outer[kMaxAxes];  // outermost first
  int nouter = 0;
  Dim a{1, 0, 0}, d{1, 0, 0};
  int64_t outer_count = 1, band = 1, bands = 1, items = 1;
};

// Plans dims[0, n) (n <= kMaxAxes); dims is scratch, left canonicalized.
MPSL_HOT void make_plan(Plan& p, Dim* dims, int n, const char* src, char* dst, int esrc, int edst) {
  p.src = src;
  p.dst = dst;
  if (!canonicalize(dims, n, p.src, p.dst)) {
    p.items = 0;
    return;
  }
  if (n == 0) dims[n++] = {1, esrc, edst};
  p.d = dims[--n];
  if (p.d.ds == edst && p.d.ss == esrc) {
    p.shape = Shape::Row;
  } else {
    // the source's fastest remaining axis
    int best = -1;
    for (int i = 0; i < n; ++i)
      if (dims[i].ss != 0 && (best < 0 || iabs(dims[i].ss) < iabs(dims[best].ss))) best = i;
    if (best >= 0) {
      p.a = dims[best];
      for (int i = best; i + 1 < n; ++i) dims[i] = dims[i + 1];
      --n;
      if (p.a.ss < 0) {  // walk a flipped axis forwards in the source
        p.src += (p.a.n - 1) * p.a.ss;
        p.dst += (p.a.n - 1) * p.a.ds;
        p.a.ss = -p.a.ss;
        p.a.ds = -p.a.ds;
      }
    }
    p.shape = (p.d.ds == edst && p.a.ss == esrc && p.a.n > 1) ? Shape::Tile : Shape::Strided;
  }
  p.nouter = n;
  for (int i = 0; i < n; ++i) {
    p.outer[i] = dims[i];
    p.outer_count *= dims[i].n;
  }
  if (p.shape == Shape::Row) {
    // a lone long row is cut in pieces so threads can share it
    p.band = p.outer_count == 1 ? kItemElements : p.d.n;
    p.bands = (p.d.n + p.band - 1) / p.band;
  } else {
    int64_t rows = kItemElements / std::max<int64_t>(p.d.n, 1);
    rows = std::max<int64_t>(32, (rows + 31) / 32 * 32);
    p.band = std::min(rows, p.a.n);
    p.bands = (p.a.n + p.band - 1) / p.band;
  }
  p.items = p.outer_count * p.bands;
}

MPSL_HOT void run_items(const Plan& p, const KernelSet& ks, Op op, RowFn row, TileFn tile, int64_t begin,
               int64_t end) {
  // Where item `begin` starts: divisions once (a 64-bit divide costs ~40 cycles, per item a
  // few microseconds on a small conv weight's 64 channels), then an odometer.
  int64_t band = begin % p.bands, m = begin / p.bands;
  int64_t idx[kMaxAxes];
  const char* s = p.src;
  char* d = p.dst;
  for (int i = p.nouter; i-- > 0;) {
    idx[i] = m % p.outer[i].n;
    m /= p.outer[i].n;
    s += idx[i] * p.outer[i].ss;
    d += idx[i] * p.outer[i].ds;
  }
  for (int64_t item = begin; item < end; ++item) {
    switch (p.shape) {
      case Shape::Row: {
        const int64_t lo = band * p.band, n = std::min(p.band, p.d.n - lo);
        row(s + lo * p.d.ss, d + lo * p.d.ds, n);
        break;
      }
      case Shape::Tile: {
        const int64_t lo = band * p.band, n = std::min(p.band, p.a.n - lo);
        tile(s + lo * p.a.ss, p.d.ss, d + lo * p.a.ds, p.a.ds, n, p.d.n);
        break;
      }
      case Shape::Strided: {
        const int64_t lo = band * p.band, n = std::min(p.band, p.a.n - lo);
        ks.strided[op](s + lo * p.a.ss, p.a.ss, p.d.ss, d + lo * p.a.ds, p.a.ds, p.d.ds, n, p.d.n);
        break;
      }
    }
    if (++band < p.bands) continue;
    band = 0;
    for (int i = p.nouter; i-- > 0;) {  // next outer index, last axis fastest
      s += p.outer[i].ss;
      d += p.outer[i].ds;
      if (++idx[i] < p.outer[i].n) break;
      s -= p.outer[i].n * p.outer[i].ss;
      d -= p.outer[i].n * p.outer[i].ds;
      idx[i] = 0;
    }
  }
}

const char* const kKernelNames[] = {"auto", "direct", "staged", "stream", "panel", "scatter", "copy"};

TileKernel g_tile_kernel = [] {
  TileKernel k = TileKernel::kAuto;
  const char* env = std::getenv("MPSLAYOUT_TILE");
  if (env) parse_tile_kernel(env, &k);
  return k;
}();

// The outer axis a walk in the source's order steps along fastest (smallest |stride|).
const Dim& source_inner(const Plan& p) {
  int best = 0;
  for (int i = 1; i < p.nouter; ++i)
    if (iabs(p.outer[i].ss) < iabs(p.outer[best].ss)) best = i;
  return p.outer[best];
}

// Whether the ISA's row copies for `op` leave with non-temporal stores (AVX2's plain
// copies; casts and the other ISAs' rows use plain stores). Streamed, kScatter wins in
// either order of the outer axes on data from memory (warm it loses, as every
// non-temporal store does); with plain stores only when the source's fastest outer axis
// is the shorter (bench/README.md, "Rows").
bool streams_rows(Op op) {
  const KernelSet& ks = kernels();
  return ks.stream_row[op] != ks.row[op];
}
bool streamed_scatter(const Plan& p, Op op, int esrc) {
  return p.d.n * esrc >= kStreamRowMinBytes && streams_rows(op);
}

// How kAuto copies `bytes` in order: the ISA's copy loop below kCopyLoopMaxBytes,
// non-temporal stores past the last-level cache (stream_bytes(), as libc's memcpy does),
// memcpy (kDirect) between. kernel_for's row plans and copy_in_order both ask here.
TileKernel in_order_kernel(int64_t bytes) {
  if (bytes < kCopyLoopMaxBytes) return TileKernel::kCopyLoop;
  return bytes >= stream_bytes() ? TileKernel::kStream : TileKernel::kDirect;
}

// The kernel for a plan (see TileKernel); kAuto's thresholds were measured on the 2-core
// EPYC VM (bench/README.md, "Kernels per shape").
MPSL_HOT TileKernel kernel_for(const Plan& p, Op op, int esrc, int edst, int64_t dst_bytes) {
  if (p.shape == Shape::Row) {
    const bool copy = op <= kCopy8;  // kCopy1..kCopy8 come first in Op
    TileKernel k = g_tile_kernel;
    if (k == TileKernel::kAuto) {
      if (p.nouter > 0 && dst_bytes >= kScatterMinBytes &&
          (streamed_scatter(p, op, esrc) ||
           (p.d.n * esrc <= kScatterMaxRowBytes && source_inner(p).n < p.outer[p.nouter - 1].n)))
        k = TileKernel::kScatter;
      else if (copy && p.nouter == 0)
        k = in_order_kernel(dst_bytes);
    }
    if (k == TileKernel::kScatter && p.nouter > 0) return k;
    if (k == TileKernel::kCopyLoop && copy) return k;
    if (k == TileKernel::kStream && copy) return k;
    return TileKernel::kDirect;
  }
  if (p.shape != Shape::Tile) return TileKernel::kDirect;
  const bool panels = p.a.ds == p.d.n * edst;  // each band's rows are one contiguous panel
  const bool whole = panels && p.a.n * (p.d.n * edst + 64) <= kStreamPanelBytes;
  TileKernel k = g_tile_kernel;
  if (k == TileKernel::kAuto) {
    if (dst_bytes >= stream_bytes()) {
      k = whole && p.band < p.a.n ? TileKernel::kPanel : TileKernel::kStream;
    } else {
      const bool fits = panels && p.band * (p.d.n * edst + 64) <= kStreamPanelBytes;
      const bool below = esrc == edst || dst_bytes < kStreamMaxBytes;
      k = fits && dst_bytes >= kStreamMinBytes && below ? TileKernel::kStream : TileKernel::kDirect;
    }
  }
  if (k == TileKernel::kPanel) return whole ? k : TileKernel::kStream;
  if (k == TileKernel::kScatter || k == TileKernel::kCopyLoop) return TileKernel::kDirect;
  return k;
}

// Applies a kernel's own walk to a plan: kScatter orders the outer axes by source stride
// (rows read in address order, written where they go); kPanel makes each whole panel one
// work item.
MPSL_HOT void shape_plan_for(Plan& p, TileKernel k) {
  if (k == TileKernel::kScatter) {  // stable insertion sort: nothing allocated on a call
    for (int i = 1; i < p.nouter; ++i) {
      const Dim x = p.outer[i];
      int j = i;
      for (; j > 0 && iabs(p.outer[j - 1].ss) < iabs(x.ss); --j) p.outer[j] = p.outer[j - 1];
      p.outer[j] = x;
    }
    return;
  }
  if (k != TileKernel::kPanel) return;
  p.band = p.a.n;
  p.bands = 1;
  p.items = p.outer_count;
}

MPSL_HOT TileFn tile_fn(const KernelSet& ks, Op op, TileKernel k) {
  switch (k) {
    case TileKernel::kStaged: return ks.staged_tile[op];
    case TileKernel::kStream:
    case TileKernel::kPanel: return ks.stream_tile[op];
    default: return ks.tile[op];
  }
}

void zero_fill(const Box& box, int edst) {
  Dim dims[kMaxAxes];
  int n = static_cast<int>(box.dims.size());
  for (int i = 0; i < n; ++i) dims[i] = {box.dims[i].n, 0, box.dims[i].ds};
  const char* s = nullptr;
  char* dst = box.dst;
  if (!canonicalize(dims, n, s, dst)) return;
  int64_t run = edst;  // contiguous bytes at the bottom
  while (n > 0 && dims[n - 1].ds == run) run *= dims[--n].n;
  int64_t count = 1;
  for (int i = 0; i < n; ++i) count *= dims[i].n;
  for (int64_t m = 0; m < count; ++m) {
    int64_t r = m;
    char* d = dst;
    for (int i = n; i-- > 0;) {
      d += (r % dims[i].n) * dims[i].ds;
      r /= dims[i].n;
    }
    std::memset(d, 0, static_cast<size_t>(run));
  }
}

}  // namespace

std::vector<Box> decompose(const Request& req) {
  for (const Bound& b : req.bounds) {
    const int nd = static_cast<int>(req.dims.size());
    if (b.outer < 0 || b.outer >= nd || b.inner < 0 || b.inner >= nd || b.outer == b.inner ||
        b.block < 1 || b.extent < 0)
      throw std::invalid_argument("invalid blocked axis description");
  }
  std::vector<Box> boxes;
  split(req, boxes, Box{req.src, req.dst, req.dims, false}, 0);
  return boxes;
}

MPSL_HOT bool execute_box(const char* src, char* dst, const Dim* dims, int ndim, int esrc, int edst,
                 Cast cast, int threads, Cancel cancel) {
  Dim scratch[kMaxAxes];
  int64_t elements = 1;
  for (int i = 0; i < ndim; ++i) {
    scratch[i] = dims[i];
    elements *= dims[i].n;
  }
  Plan p;
  make_plan(p, scratch, ndim, src, dst, esrc, edst);
  if (p.items == 0) return true;
  const KernelSet& ks = kernels();
  const Op op = op_for(cast, esrc);
  const int64_t bytes = elements * (esrc + edst);
  const TileKernel kernel = kernel_for(p, op, esrc, edst, elements * edst);
  shape_plan_for(p, kernel);
  const TileFn tile = tile_fn(ks, op, kernel);
  // kScatter's rows leave with non-temporal stores too (a plain copy's; casts keep plain
  // ones): 16 write streams at one page offset thrash L1's sets with partial lines and
  // read every destination line first (bench/README.md, "Rows").
  const bool streamed_rows =
      p.shape == Shape::Row && (kernel == TileKernel::kScatter ? streamed_scatter(p, op, esrc)
                                : kernel == TileKernel::kStream && streams_rows(op));
  const RowFn row = kernel == TileKernel::kCopyLoop ? ks.copy_row[op]
                    : streamed_rows                 ? ks.stream_row[op]
                                                    : ks.row[op];
  // non-temporal stores are weakly ordered: each thread fences its own before it reports
  const bool fence = streamed_rows || kernel == TileKernel::kStream || kernel == TileKernel::kPanel;
  if (threads <= 1 || bytes < kParallelBytes || p.items == 1) {
    if (!cancel.poll || bytes < kCancelBytes) {  // the short path: one call, no chunks
      run_items(p, ks, op, row, tile, 0, p.items);
      if (fence) std::atomic_thread_fence(std::memory_order_seq_cst);
      return true;
    }
  }
  // Work goes in chunks of a few MiB; between chunks the calling thread asks whether the
  // caller wants to stop (Ctrl-C), and every thread stops taking chunks once it does.
  const int64_t per_item = std::max<int64_t>(1, bytes / p.items);
  const int64_t chunk = std::max<int64_t>(1, kCancelBytes / per_item);
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> stop{false};
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e && !stop.load(std::memory_order_relaxed); i += chunk) {
      run_items(p, ks, op, row, tile, i, std::min(e, i + chunk));
      if (fence) std::atomic_thread_fence(std::memory_order_seq_cst);
      if (cancel.poll && std::this_thread::get_id() == caller && cancel.poll(cancel.ctx)) stop.store(true);
    }
  };
  if (threads <= 1 || bytes < kParallelBytes || p.items == 1) {
    body(0, p.items);
  } else {
    const int64_t per_thread = (p.items + threads - 1) / threads;
    const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(per_thread / 4, 64));
    ThreadPool::instance().run(p.items, grain, threads, body);
  }
  return !stop.load();
}

bool execute(const std::vector<Box>& boxes, int esrc, int edst, Cast cast, int threads,
             Cancel cancel) {
  for (const Box& box : boxes) {
    if (box.zero) {
      zero_fill(box, edst);
      continue;
    }
    if (!execute_box(box.src, box.dst, box.dims.data(), static_cast<int>(box.dims.size()), esrc,
                     edst, cast, threads, cancel))
      return false;
  }
  return true;
}

MPSL_HOT void copy_in_order(const char* src, char* dst, int64_t bytes) {
  TileKernel k = g_tile_kernel;
  if (k == TileKernel::kAuto) k = in_order_kernel(bytes);
  if (k == TileKernel::kCopyLoop) {
    kernels().copy_row[kCopy1](src, dst, bytes);
  } else if (k == TileKernel::kStream) {
    kernels().stream_row[kCopy1](src, dst, bytes);
    std::atomic_thread_fence(std::memory_order_seq_cst);
  } else if (bytes > 0)
    std::memcpy(dst, src, static_cast<size_t>(bytes));
}

TileKernel tile_kernel_override() { return g_tile_kernel; }
const char* tile_kernel_name(TileKernel k) { return kKernelNames[static_cast<int>(k)]; }
bool parse_tile_kernel(const char* name, TileKernel* k) {
  for (int i = 0; i < static_cast<int>(sizeof(kKernelNames) / sizeof(kKernelNames[0])); ++i)
    if (std::strcmp(name, kKernelNames[i]) == 0) {
      *k = static_cast<TileKernel>(i);
      return true;
    }
  return false;
}
void set_tile_kernel_override(TileKernel k) { g_tile_kernel = k; }

const char* describe_plan(const Request& req) {
  const std::vector<Box> boxes = decompose(req);
  if (boxes.empty()) return "empty";
  const Box& box = boxes.front();
  Dim scratch[kMaxAxes];
  const int n = static_cast<int>(box.dims.size());
  int64_t elements = 1;
  for (int i = 0; i < n; ++i) {
    scratch[i] = box.dims[i];
    elements *= box.dims[i].n;
  }
  Plan p;
  make_plan(p, scratch, n, box.src, box.dst, req.esrc, req.edst);
  if (p.items == 0) return "empty";
  const TileKernel k = kernel_for(p, op_for(req.cast, req.esrc), req.esrc, req.edst, elements * req.edst);
  switch (p.shape) {
    case Shape::Row:
      return k == TileKernel::kScatter ? "scatter" : k == TileKernel::kCopyLoop ? "copy" : k == TileKernel::kStream ? "stream" : "row";
    case Shape::Tile:
      switch (k) {
        case TileKernel::kStaged: return "staged";
        case TileKernel::kStream: return "stream";
        case TileKernel::kPanel: return "panel";
        default: return "tile";
      }
    default: return "strided";
  }
}

}  // namespace mpslayout
