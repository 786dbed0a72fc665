// A C++-only check of the engine (no Python): used to prove the portable build on other
// architectures and CPUs (.ci/portability runs it for aarch64 and on an x86-64 without AVX,
// both under qemu). Compares transposes, a blocked destination and the float16 cast with
// loops over indices. `engine_selftest ISA` also fails unless dispatch picked ISA.
#include <cstdio>
#include <cstring>
#include <vector>

#include "layout/engine.hpp"
#include "layout/kernels.hpp"

using namespace mpslayout;

static int transpose_case(int rows, int cols, int threads) {
  std::vector<float> s(rows * cols), d(rows * cols);
  for (int i = 0; i < rows * cols; ++i) s[i] = static_cast<float>(i) * 0.5f;
  Request r{reinterpret_cast<const char*>(s.data()), reinterpret_cast<char*>(d.data()), 4, 4,
            Cast::None, {{cols, 4, 4 * rows}, {rows, 4 * cols, 4}}, {}};
  execute(decompose(r), 4, 4, Cast::None, threads);
  int bad = 0;
  for (int c = 0; c < cols; ++c)
    for (int k = 0; k < rows; ++k) bad += d[c * rows + k] != s[k * cols + c];
  return bad;
}

static int blocked_case() {  // C=5 channels of 3 pixels -> (2 slices, 3 pixels, 4), zero padded
  const int C = 5, P = 3;
  std::vector<float> s(C * P), d(2 * P * 4, -1.0f);
  for (int i = 0; i < C * P; ++i) s[i] = static_cast<float>(i + 1);
  Request r{reinterpret_cast<const char*>(s.data()), reinterpret_cast<char*>(d.data()), 4, 4,
            Cast::None, {{2, 4 * 4 * P, 4 * P * 4}, {P, 4, 16}, {4, 4 * P, 4}},
            {{0, 2, 4, C, true}}};
  execute(decompose(r), 4, 4, Cast::None, 1);
  int bad = 0;
  for (int sl = 0; sl < 2; ++sl)
    for (int p = 0; p < P; ++p)
      for (int k = 0; k < 4; ++k) {
        const int c = 4 * sl + k;
        const float want = c < C ? s[c * P + p] : 0.0f;
        bad += d[(sl * P + p) * 4 + k] != want;
      }
  return bad;
}

static int cast_case() {  // every float16 pattern -> float32 -> float16 is the identity
  std::vector<uint16_t> h(65536), back(65536);
  std::vector<uint32_t> f(65536);
  for (int i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  Request up{reinterpret_cast<const char*>(h.data()), reinterpret_cast<char*>(f.data()), 2, 4,
             Cast::F16toF32, {{65536, 2, 4}}, {}};
  execute(decompose(up), 2, 4, Cast::F16toF32, 1);
  Request down{reinterpret_cast<const char*>(f.data()), reinterpret_cast<char*>(back.data()), 4, 2,
               Cast::F32toF16, {{65536, 4, 2}}, {}};
  execute(decompose(down), 4, 2, Cast::F32toF16, 1);
  int bad = 0;
  for (int i = 0; i < 65536; ++i) bad += back[i] != h[i] || f[i] != f16_to_f32(h[i]);
  return bad;
}

int main(int argc, char** argv) {
  int bad = 0;
  for (int rows : {1, 3, 8, 9, 33, 200})
    for (int cols : {1, 4, 7, 16, 49, 300}) bad += transpose_case(rows, cols, 2);
  bad += blocked_case();
  bad += cast_case();
  std::printf("engine self-test on %s: %s\n", kernels().isa, bad ? "FAILED" : "ok");
  if (argc > 1 && std::strcmp(argv[1], kernels().isa) != 0) {
    std::printf("engine self-test: expected dispatch to pick %s\n", argv[1]);
    return 1;
  }
  return bad ? 1 : 0;
}
