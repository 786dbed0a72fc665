// A C++-only check of the engine (no Python): used to prove the portable build on other
// architectures and CPUs (.ci/portability runs it for aarch64 and on an x86-64 without AVX,
// both under qemu, and for clang builds). Two parts:
//  - the engine end to end (transposes, a blocked destination, the float16 cast) against
//    loops over indices;
//  - every kernel of the dispatched table (NEON, AVX2, SSE2) against the portable scalar
//    kernel, byte for byte, over block edges, odd tails, unaligned and negative strides,
//    padded destinations (guard bytes around each must survive), and for the casts every
//    float16 bit pattern, float32 values at and around every float16 rounding boundary,
//    signalling and quiet NaNs with many payloads.
// `engine_selftest ISA` also fails unless dispatch picked ISA; `--bench` prints the speed of
// each dispatched kernel relative to the scalar one.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
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

// ---- every dispatched kernel against the scalar one ----------------------------------------

struct OpInfo {
  Op op;
  const char* name;
  int es, ed;
};
static const OpInfo kOps[] = {
    {kCopy1, "copy1", 1, 1},          {kCopy2, "copy2", 2, 2},          {kCopy4, "copy4", 4, 4},
    {kCopy8, "copy8", 8, 8},          {kF32F16, "f32->f16", 4, 2},      {kF16F32, "f16->f32", 2, 4},
    {kF64F32, "f64->f32", 8, 4},      {kF32BF16, "f32->bf16", 4, 2},    {kBF16F32, "bf16->f32", 2, 4},
};

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t next_u32() {  // xorshift64*
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  return static_cast<uint32_t>((g_rng * 0x2545f4914f6cdd1dull) >> 32);
}

// float32 patterns the conversions treat specially: NaNs (quiet, signalling, payload only in
// the bits float16 drops), infinities, the float16 overflow and underflow thresholds and their
// neighbours, exact halfway cases, subnormals of both formats.
static const uint32_t kSpecialF32[] = {
    0x7f800001u, 0xff800001u, 0x7fc00000u, 0xffc00000u, 0x7fa00000u, 0x7f801fffu, 0x7fffe000u,
    0x7fbfffffu, 0x7f800000u, 0xff800000u, 0x00000000u, 0x80000000u, 0x477fe000u, 0x477fefffu,
    0x477ff000u, 0x477ff001u, 0x38800000u, 0x387fffffu, 0x387fc000u, 0x33000000u, 0x33000001u,
    0x32ffffffu, 0x33800000u, 0x00000001u, 0x807fffffu, 0x3f801000u, 0x3f803000u, 0x3f800fffu,
    0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x4b800000u};

// Random bytes; for float32 sources every 5th element is a special pattern.
static void fill_source(std::vector<char>& buf, int es) {
  for (size_t i = 0; i < buf.size(); i += 4) {
    const uint32_t r = next_u32();
    std::memcpy(buf.data() + i, &r, std::min<size_t>(4, buf.size() - i));
  }
  if (es == 4) {
    const size_t n = sizeof(kSpecialF32) / sizeof(kSpecialF32[0]);
    for (size_t i = 0; i + 4 <= buf.size(); i += 20)
      std::memcpy(buf.data() + i, &kSpecialF32[next_u32() % n], 4);
  }
}

static int g_calls = 0;
static int report(bool same, const char* kind, const OpInfo& o, long long x, long long y,
                  long long s1, long long s2) {
  ++g_calls;
  if (same) return 0;
  std::fprintf(stderr, "mismatch: %s %s sizes %lld %lld strides %lld %lld\n", kind, o.name, x, y, s1, s2);
  return 1;
}

// Runs `call(ks, src, dst)` for the active table and the scalar one on the same source and
// equal, guard-filled destinations of `dbytes` (dst points `doff` bytes in); compares all.
template <class Call>
static bool same_output(const KernelSet& ks, const KernelSet& ref, const std::vector<char>& src,
                        int64_t soff, int64_t dbytes, int64_t doff, Call call) {
  std::vector<char> a(dbytes + 64, '\xa5'), b(dbytes + 64, '\xa5');
  call(ks, src.data() + soff, a.data() + 32 + doff);
  call(ref, src.data() + soff, b.data() + 32 + doff);
  return a == b;
}

static int tile_cases(const KernelSet& ks, const KernelSet& ref, const OpInfo& o) {
  static const int sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 67};
  int bad = 0;
  for (int na : sizes)
    for (int nd : sizes) {
      const int64_t es = o.es, ed = o.ed;
      // source rows packed, padded, odd-byte apart (unaligned), or walked backwards
      const int64_t ssds[] = {na * es, na * es + 3 * es, na * es + 1, -(na * es + es)};
      // destination rows packed (narrow interleave paths), padded, or walked backwards
      const int64_t dsas[] = {nd * ed, nd * ed + 5 * ed, -(nd * ed)};
      for (int64_t ssd : ssds)
        for (int64_t dsa : dsas) {
          const int64_t sspan = (nd - 1) * (ssd < 0 ? -ssd : ssd) + na * es;
          const int64_t dspan = (na - 1) * (dsa < 0 ? -dsa : dsa) + nd * ed;
          std::vector<char> src(sspan + 8);
          fill_source(src, o.es);
          const int64_t soff = ssd < 0 ? (nd - 1) * -ssd : 0, doff = dsa < 0 ? (na - 1) * -dsa : 0;
          // the plain tile, then the staged and streaming variants where they differ
          const TileFn* tables[] = {ks.tile, ks.staged_tile, ks.stream_tile};
          const TileFn* ref_tables[] = {ref.tile, ref.staged_tile, ref.stream_tile};
          const char* names[] = {"tile", "staged_tile", "stream_tile"};
          for (int t = 0; t < 3; ++t) {
            if (t > 0 && tables[t][o.op] == ks.tile[o.op]) continue;
            std::vector<char> a(dspan + 64, '\xa5'), b(dspan + 64, '\xa5');
            tables[t][o.op](src.data() + soff, ssd, a.data() + 32 + doff, dsa, na, nd);
            ref_tables[t][o.op](src.data() + soff, ssd, b.data() + 32 + doff, dsa, na, nd);
            bad += report(a == b, names[t], o, na, nd, ssd, dsa);
          }
        }
    }
  return bad;
}

static int row_cases(const KernelSet& ks, const KernelSet& ref, const OpInfo& o) {
  int bad = 0;
  std::vector<int64_t> lengths;
  for (int64_t n = 0; n <= 40; ++n) lengths.push_back(n);
  for (int64_t n : {63, 64, 65, 100, 127, 128, 129, 255, 1001, 4099}) lengths.push_back(n);
  for (int64_t n : lengths)
    for (int64_t soff : {0, 1})
      for (int64_t doff : {0, 3}) {
        std::vector<char> src(n * o.es + 8);
        fill_source(src, o.es);
        const bool same = same_output(ks, ref, src, soff, n * o.ed + 8, doff,
            [&](const KernelSet& k, const char* s, char* d) { k.row[o.op](s, d, n); });
        bad += report(same, "row", o, n, 0, soff, doff);
        // the in-order copy loop (kCopyLoop) against the scalar row
        const bool loop = same_output(ks, ref, src, soff, n * o.ed + 8, doff,
            [&](const KernelSet& k, const char* s, char* d) {
              (&k == &ref ? k.row : k.copy_row)[o.op](s, d, n);
            });
        bad += report(loop, "copy_row", o, n, 0, soff, doff);
      }
  return bad;
}

static int strided_cases(const KernelSet& ks, const KernelSet& ref, const OpInfo& o) {
  int bad = 0;
  for (int na : {1, 5, 16})
    for (int nd : {1, 3, 9}) {
      const int64_t es = o.es, ed = o.ed;
      const int64_t ssa = 3 * es, ssd = na * 3 * es + 1, dsa = nd * 2 * ed + 5, dsd = 2 * ed;
      std::vector<char> src((na - 1) * ssa + (nd - 1) * ssd + es + 8);
      fill_source(src, o.es);
      const bool same = same_output(ks, ref, src, 0, (na - 1) * dsa + (nd - 1) * dsd + ed, 0,
          [&](const KernelSet& k, const char* s, char* d) {
            k.strided[o.op](s, ssa, ssd, d, dsa, dsd, na, nd);
          });
      bad += report(same, "strided", o, na, nd, ssa, ssd);
    }
  return bad;
}

// The casts on whole value sets, through the row kernel, a square tile and the narrow
// interleaving tiles (3 and 4 packed columns).
static int value_set_case(const KernelSet& ks, const KernelSet& ref, const OpInfo& o,
                          const std::vector<char>& src) {
  int bad = 0;
  const int64_t n = static_cast<int64_t>(src.size()) / o.es;
  bad += report(same_output(ks, ref, src, 0, n * o.ed, 0,
                            [&](const KernelSet& k, const char* s, char* d) { k.row[o.op](s, d, n); }),
                "row (value set)", o, n, 0, 0, 0);
  for (int64_t nd : {256, 4, 3}) {
    const int64_t na = n / nd;  // source: nd rows of na values; destination: na rows of nd
    bad += report(same_output(ks, ref, src, 0, na * nd * o.ed, 0,
                              [&](const KernelSet& k, const char* s, char* d) {
                                k.tile[o.op](s, na * o.es, d, nd * o.ed, na, nd);
                              }),
                  "tile (value set)", o, na, nd, 0, 0);
  }
  return bad;
}

static int cast_value_sets(const KernelSet& ks, const KernelSet& ref) {
  int bad = 0;
  std::vector<char> halves(65536 * 2);  // every float16 / bfloat16 bit pattern
  for (uint32_t i = 0; i < 65536; ++i) std::memcpy(halves.data() + 2 * i, &i, 2);
  // float32: each float16 value and its neighbours at the rounding boundaries (the exact
  // halfway point for normal results, one ulp either side of it and of the value), then a
  // sweep of the whole 32-bit space.
  std::vector<uint32_t> f;
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t v = f16_to_f32(static_cast<uint16_t>(h));
    for (uint32_t delta : {0u, 1u, 0xfffu, 0x1000u, 0x1001u}) f.push_back(v + delta);
    f.push_back(v - 1);
  }
  for (uint64_t u = 0; u < (1ull << 32); u += 4099) f.push_back(static_cast<uint32_t>(u));
  for (uint32_t s : kSpecialF32) f.push_back(s);
  while (f.size() % (256 * 12)) f.push_back(next_u32());
  std::vector<char> floats(f.size() * 4);
  std::memcpy(floats.data(), f.data(), floats.size());
  for (const OpInfo& o : kOps) {
    if (o.op == kF16F32 || o.op == kBF16F32) bad += value_set_case(ks, ref, o, halves);
    if (o.op == kF32F16 || o.op == kF32BF16) bad += value_set_case(ks, ref, o, floats);
  }
  return bad;
}

static int kernel_cases(const KernelSet& ks, const KernelSet& ref) {
  int bad = cast_value_sets(ks, ref);
  for (const OpInfo& o : kOps) bad += tile_cases(ks, ref, o) + row_cases(ks, ref, o) + strided_cases(ks, ref, o);
  return bad;
}

// Quick timing on finite values: best of 5 runs of a (256 x 256) transpose and a 64K-element row.
static void bench(const KernelSet& ks, const KernelSet& ref) {
  const int64_t n = 256;
  for (const OpInfo& o : kOps) {
    std::vector<char> src(n * n * o.es), dst(n * n * o.ed);
    for (int64_t i = 0; i < n * n; ++i) {  // finite values: no NaN takes a scalar fallback
      const uint64_t v = o.es == 2 ? 0x3c00u + i % 0x3000u : o.es == 4 ? f32_bits(0.25f * (i % 4096)) : i;
      std::memcpy(src.data() + i * o.es, &v, o.es);
    }
    double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}};
    const KernelSet* sets[2] = {&ref, &ks};
    for (int rep = 0; rep < 5; ++rep)
      for (int which = 0; which < 2; ++which) {
        auto t0 = std::chrono::steady_clock::now();
        sets[which]->tile[o.op](src.data(), n * o.es, dst.data(), n * o.ed, n, n);
        auto t1 = std::chrono::steady_clock::now();
        sets[which]->row[o.op](src.data(), dst.data(), n * n);
        auto t2 = std::chrono::steady_clock::now();
        best[which][0] = std::min(best[which][0], std::chrono::duration<double>(t1 - t0).count());
        best[which][1] = std::min(best[which][1], std::chrono::duration<double>(t2 - t1).count());
      }
    std::printf("bench %-10s tile 256x256: scalar/%s %.2fx   row 65536: %.2fx\n", o.name, ks.isa,
                best[0][0] / best[1][0], best[0][1] / best[1][1]);
  }
}

int main(int argc, char** argv) {
  const char* expect = nullptr;
  bool do_bench = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--bench") == 0) do_bench = true;
    else expect = argv[i];
  }
  int bad = 0;
  for (int rows : {1, 3, 8, 9, 33, 200})
    for (int cols : {1, 4, 7, 16, 49, 300}) bad += transpose_case(rows, cols, 2);
  bad += blocked_case();
  bad += cast_case();
  KernelSet ref{};
  fill_scalar(ref);
  bad += kernel_cases(kernels(), ref);
  if (bad) std::fprintf(stderr, "%d of %d kernel calls differ from scalar\n", bad, g_calls);
  std::printf("engine self-test on %s: %s\n", kernels().isa, bad ? "FAILED" : "ok");
  if (do_bench) bench(kernels(), ref);
  if (expect && std::strcmp(expect, kernels().isa) != 0) {
    std::printf("engine self-test: expected dispatch to pick %s\n", expect);
    return 1;
  }
  return bad ? 1 : 0;
}
