// Cold conv OIHW->OHWI from C++ (no Python): the direct, staged and stream tile kernels
// against a memcpy of the same bytes, paired per round (rotating order), a 64 MiB flush
// before each run; prints the median t/memcpy of each (bench/README.md, "Kernels per shape").
//
//   g++ -O3 -std=c++17 -Icsrc bench/tile_kernels.cpp csrc/layout/engine.cpp \
//       csrc/layout/dispatch.cpp csrc/layout/kernels_avx2.cpp -o /tmp/tile_kernels -lpthread
//   /tmp/tile_kernels O I kH kW [f16: 0|1] [rounds]      e.g. 512 512 3 3 0 15
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "layout/engine.hpp"
using namespace mpslayout;
static std::vector<char> flushbuf(64 << 20);
static volatile long sink;
static void flush() { long s = 0; for (size_t i = 0; i < flushbuf.size(); i += 64) { flushbuf[i]++; s += flushbuf[i]; } sink = s; }
static double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
int main(int argc, char** argv) {
  int O = atoi(argv[1]), I = atoi(argv[2]), KH = atoi(argv[3]), KW = atoi(argv[4]);
  int f16 = argc > 5 ? atoi(argv[5]) : 0; int rounds = argc > 6 ? atoi(argv[6]) : 15;
  const int edst = f16 ? 2 : 4; const Cast cast = f16 ? Cast::F32toF16 : Cast::None;
  size_t n = size_t(O) * I * KH * KW;
  char* src = (char*)aligned_alloc(64, n * 4 + 64) ; char* dst = (char*)aligned_alloc(64, n * 4 + 64);
  char* m1 = (char*)aligned_alloc(64, n * 4 + 64); char* m2 = (char*)aligned_alloc(64, n * 4 + 64);
  src += 16; dst += 16;  // 16 bytes past a line, like malloc'd numpy data
  for (size_t i = 0; i < n; ++i) ((float*)src)[i] = (float)(i % 1000) * 0.25f;
  memset(dst, 1, n * edst); memset(m1, 2, n * 4); memset(m2, 3, n * 4);
  int64_t K = KH * KW;
  Dim dims[3] = {{O, int64_t(I) * K * 4, K * I * edst}, {K, 4, int64_t(I) * edst}, {I, K * 4, edst}};
  auto run = [&](TileKernel k) { set_tile_kernel_override(k); execute_box(src, dst, dims, 3, 4, edst, cast, 1); };
  const int V = 4;  // direct, staged, stream, memcpy
  std::vector<double> t[V], ratio[V];
  for (int r = 0; r < rounds + 1; ++r) {
    double tt[V];
    for (int j = 0; j < V; ++j) {
      int w = (j + r) % V; flush(); double t0 = now();
      if (w == 0) run(TileKernel::kDirect); else if (w == 1) run(TileKernel::kStaged);
      else if (w == 2) run(TileKernel::kStream); else memcpy(m2, m1, n * 4);
      tt[w] = now() - t0;
    }
    if (r == 0) continue;
    for (int w = 0; w < V; ++w) { t[w].push_back(tt[w]); ratio[w].push_back(tt[w] / tt[3]); }
  }
  auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  printf("(%d,%d,%d,%d)%s %7.1f KB memcpy %7.1f us | t/memcpy direct %.2f staged %.2f stream %.2f\n", O, I, KH, KW, f16 ? " f16" : "    ",
         n * 4 / 1024.0, med(t[3]) * 1e6, med(ratio[0]), med(ratio[1]), med(ratio[2]));
}
