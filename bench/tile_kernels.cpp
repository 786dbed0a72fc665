// The engine's kernels per shape family, from C++ (no Python): each forced kernel of the
// family against a memcpy of the same bytes, paired per round (rotating order), the caches
// flushed (64 MiB read and written) before each run, or none (`warm`); prints the median
// t/memcpy of each and its 25-75% range (bench/README.md, "Kernels per shape").
//
//   g++ -O3 -std=c++17 -Icsrc bench/tile_kernels.cpp csrc/layout/engine.cpp
//       csrc/layout/dispatch.cpp csrc/layout/kernels_avx2.cpp -o /tmp/tile_kernels -lpthread
//   /tmp/tile_kernels conv O I kH kW [f16 0|1] [rounds] [threads]   (512 512 3 3 0 15 1)
//   /tmp/tile_kernels rows C HW I [f16] [rounds] [threads]          (512 16 100: DCGAN)
//   /tmp/tile_kernels copy N [f16] [rounds] [threads]               (16384: a 64 kB 1x1)
// A Linear after flatten, (O, C*H*W) -> (O, H, W, C), is `conv O C H W` (the same permutation).
// MPSLAYOUT_HARNESS_WARM=1 skips the flush (data and code in cache).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "layout/engine.hpp"
using namespace mpslayout;
static std::vector<char> flushbuf(64 << 20);
static volatile long sink;
static void flush() { long s = 0; for (size_t i = 0; i < flushbuf.size(); i += 64) { flushbuf[i]++; s += flushbuf[i]; } sink = s; }
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
static char* alloc(size_t n) { return static_cast<char*>(aligned_alloc(64, (n + 64 + 63) / 64 * 64)); }

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: see the top of bench/tile_kernels.cpp\n"); return 2; }
  const std::string fam = argv[1];
  const int nsize = fam == "copy" ? 1 : 3 + (fam == "conv");
  std::vector<int64_t> v;
  for (int i = 0; i < nsize; ++i) v.push_back(atoll(argv[2 + i]));
  int k = 2 + nsize;
  const int f16 = argc > k ? atoi(argv[k]) : 0;
  const int rounds = argc > k + 1 ? atoi(argv[k + 1]) : 15;
  const int threads = argc > k + 2 ? atoi(argv[k + 2]) : 1;
  const bool warm = getenv("MPSLAYOUT_HARNESS_WARM") != nullptr;
  const int edst = f16 ? 2 : 4; const Cast cast = f16 ? Cast::F32toF16 : Cast::None;
  std::vector<Dim> dims;
  std::vector<std::pair<const char*, TileKernel>> kernels;
  if (fam == "conv") {  // (O, I, K) -> (O, K, I)
    const int64_t O = v[0], I = v[1], K = v[2] * v[3];
    dims = {{O, I * K * 4, K * I * edst}, {K, 4, I * edst}, {I, K * 4, edst}};
    kernels = {{"direct", TileKernel::kDirect}, {"staged", TileKernel::kStaged},
               {"stream", TileKernel::kStream}, {"panel", TileKernel::kPanel}, {"auto", TileKernel::kAuto}};
  } else if (fam == "rows") {  // (C, HW, I) -> (HW, C, I)
    const int64_t C = v[0], HW = v[1], I = v[2];
    dims = {{HW, I * 4, C * I * edst}, {C, HW * I * 4, I * edst}, {I, 4, edst}};
    kernels = {{"plain", TileKernel::kDirect}, {"scatter", TileKernel::kScatter}, {"auto", TileKernel::kAuto}};
  } else {
    dims = {{v[0], 4, edst}};
    kernels = {{"memcpy", TileKernel::kDirect}, {"loop", TileKernel::kCopyLoop}, {"auto", TileKernel::kAuto}};
  }
  size_t n = 1;
  for (const Dim& d : dims) n *= d.n;
  char* src = alloc(n * 4) + 16; char* dst = alloc(n * edst) + 16;  // 16 bytes past a line, like numpy data
  char* m2 = alloc(n * 4) + 16;
  for (size_t i = 0; i < n; ++i) reinterpret_cast<float*>(src)[i] = static_cast<float>(i % 1000) * 0.25f;
  memset(dst, 1, n * edst); memset(m2, 3, n * 4);
  const int V = static_cast<int>(kernels.size()) + 1;  // the kernels, then memcpy
  std::vector<std::vector<double>> t(V), ratio(V);
  for (int r = 0; r < rounds + 1; ++r) {
    std::vector<double> tt(V);
    for (int j = 0; j < V; ++j) {
      const int w = (j + r) % V;
      if (!warm) flush();
      const double t0 = now();
      if (w + 1 == V) {
        memcpy(m2, src, n * 4);
      } else {
        set_tile_kernel_override(kernels[w].second);
        execute_box(src, dst, dims.data(), static_cast<int>(dims.size()), 4, edst, cast, threads);
      }
      tt[w] = now() - t0;
    }
    if (r == 0) continue;  // warm-up round
    for (int w = 0; w < V; ++w) { t[w].push_back(tt[w]); ratio[w].push_back(tt[w] / tt[V - 1]); }
  }
  auto q = [](std::vector<double> x, double f) { std::sort(x.begin(), x.end()); return x[static_cast<size_t>(f * (x.size() - 1) + 0.5)]; };
  printf("%s", fam.c_str());
  for (int64_t x : v) printf(" %lld", static_cast<long long>(x));
  printf("%s thr %d %.1f KB, memcpy %.1f us | t/memcpy:", f16 ? " f16" : "", threads, n * 4 / 1024.0, q(t[V - 1], 0.5) * 1e6);
  for (int w = 0; w + 1 < V; ++w) printf(" %s %.2f (%.2f-%.2f)", kernels[w].first, q(ratio[w], 0.5), q(ratio[w], 0.25), q(ratio[w], 0.75));
  printf("\n");
}
