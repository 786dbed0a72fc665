// Picks the instruction set once, at run time (cpuid), never at compile time: the same
// wheel runs on any x86-64; on AArch64 NEON is baseline and always chosen.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include "kernels.hpp"
#include "kernels_macro.hpp"
#include "kernels_scalar.hpp"
#if defined(MPSLAYOUT_X86)
#include <emmintrin.h>
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace mpslayout {

void fill_scalar(KernelSet& ks) {
  ks.isa = "scalar";
  ks.row[kCopy1] = scalar::row_memcpy<1>;
  ks.row[kCopy2] = scalar::row_memcpy<2>;
  ks.row[kCopy4] = scalar::row_memcpy<4>;
  ks.row[kCopy8] = scalar::row_memcpy<8>;
  ks.row[kF32F16] = scalar::row<Convert<Cast::F32toF16>>;
  ks.row[kF16F32] = scalar::row<Convert<Cast::F16toF32>>;
  ks.row[kF64F32] = scalar::row<Convert<Cast::F64toF32>>;
  ks.row[kF32BF16] = scalar::row<Convert<Cast::F32toBF16>>;
  ks.row[kBF16F32] = scalar::row<Convert<Cast::BF16toF32>>;
#define MPSL_FILL(field, fn)                            \
  ks.field[kCopy1] = fn<Copy<uint8_t>>;                  \
  ks.field[kCopy2] = fn<Copy<uint16_t>>;                 \
  ks.field[kCopy4] = fn<Copy<uint32_t>>;                 \
  ks.field[kCopy8] = fn<Copy<uint64_t>>;                 \
  ks.field[kF32F16] = fn<Convert<Cast::F32toF16>>;       \
  ks.field[kF16F32] = fn<Convert<Cast::F16toF32>>;       \
  ks.field[kF64F32] = fn<Convert<Cast::F64toF32>>;       \
  ks.field[kF32BF16] = fn<Convert<Cast::F32toBF16>>;     \
  ks.field[kBF16F32] = fn<Convert<Cast::BF16toF32>>;
  MPSL_FILL(tile, scalar::tile)
  MPSL_FILL(strided, scalar::strided)
#undef MPSL_FILL
  for (int i = 0; i < kNumOps; ++i) ks.staged_tile[i] = ks.stream_tile[i] = ks.tile[i];
  for (int i = 0; i < kNumOps; ++i) ks.copy_row[i] = ks.stream_row[i] = ks.row[i];
}

#if defined(MPSLAYOUT_X86)
namespace {
// SSE2 is part of every x86-64: 4x4 blocks of 4-byte and 8x8 blocks of 2-byte elements.
inline void block4x4_32(const char* s, int64_t ssd, char* d, int64_t dsa) {
  __m128 r0 = _mm_loadu_ps(reinterpret_cast<const float*>(s));
  __m128 r1 = _mm_loadu_ps(reinterpret_cast<const float*>(s + ssd));
  __m128 r2 = _mm_loadu_ps(reinterpret_cast<const float*>(s + 2 * ssd));
  __m128 r3 = _mm_loadu_ps(reinterpret_cast<const float*>(s + 3 * ssd));
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(reinterpret_cast<float*>(d), r0);
  _mm_storeu_ps(reinterpret_cast<float*>(d + dsa), r1);
  _mm_storeu_ps(reinterpret_cast<float*>(d + 2 * dsa), r2);
  _mm_storeu_ps(reinterpret_cast<float*>(d + 3 * dsa), r3);
}

inline __m128i load128(const char* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline void store128(char* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

inline void block8x8_16(const char* s, int64_t ssd, char* d, int64_t dsa) {
  const __m128i r0 = load128(s), r1 = load128(s + ssd), r2 = load128(s + 2 * ssd),
                r3 = load128(s + 3 * ssd), r4 = load128(s + 4 * ssd), r5 = load128(s + 5 * ssd),
                r6 = load128(s + 6 * ssd), r7 = load128(s + 7 * ssd);
  const __m128i t0 = _mm_unpacklo_epi16(r0, r1), t1 = _mm_unpackhi_epi16(r0, r1);
  const __m128i t2 = _mm_unpacklo_epi16(r2, r3), t3 = _mm_unpackhi_epi16(r2, r3);
  const __m128i t4 = _mm_unpacklo_epi16(r4, r5), t5 = _mm_unpackhi_epi16(r4, r5);
  const __m128i t6 = _mm_unpacklo_epi16(r6, r7), t7 = _mm_unpackhi_epi16(r6, r7);
  const __m128i u0 = _mm_unpacklo_epi32(t0, t2), u1 = _mm_unpackhi_epi32(t0, t2);
  const __m128i u2 = _mm_unpacklo_epi32(t1, t3), u3 = _mm_unpackhi_epi32(t1, t3);
  const __m128i u4 = _mm_unpacklo_epi32(t4, t6), u5 = _mm_unpackhi_epi32(t4, t6);
  const __m128i u6 = _mm_unpacklo_epi32(t5, t7), u7 = _mm_unpackhi_epi32(t5, t7);
  store128(d, _mm_unpacklo_epi64(u0, u4));
  store128(d + dsa, _mm_unpackhi_epi64(u0, u4));
  store128(d + 2 * dsa, _mm_unpacklo_epi64(u1, u5));
  store128(d + 3 * dsa, _mm_unpackhi_epi64(u1, u5));
  store128(d + 4 * dsa, _mm_unpacklo_epi64(u2, u6));
  store128(d + 5 * dsa, _mm_unpackhi_epi64(u2, u6));
  store128(d + 6 * dsa, _mm_unpacklo_epi64(u3, u7));
  store128(d + 7 * dsa, _mm_unpackhi_epi64(u3, u7));
}

void tile4_sse2(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  macro_tile<Copy<uint32_t>, 4>(src, ssd, dst, dsa, na, nd, block4x4_32);
}
void tile2_sse2(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  macro_tile<Copy<uint16_t>, 8>(src, ssd, dst, dsa, na, nd, block8x8_16);
}
}  // namespace

void fill_sse2(KernelSet& ks) {
  fill_scalar(ks);
  ks.isa = "sse2";
  ks.tile[kCopy4] = ks.staged_tile[kCopy4] = ks.stream_tile[kCopy4] = tile4_sse2;
  ks.tile[kCopy2] = ks.staged_tile[kCopy2] = ks.stream_tile[kCopy2] = tile2_sse2;
}

// cpuid leaf `leaf`, subleaf `sub` into r = {eax, ebx, ecx, edx}; the compiler-specific
// part is only this and xcr0() (MSVC has no GCC builtins, GCC's _xgetbv needs -mxsave).
static void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if defined(_MSC_VER) && !defined(__clang__)
  int regs[4];
  __cpuidex(regs, static_cast<int>(leaf), static_cast<int>(sub));
  for (int i = 0; i < 4; ++i) r[i] = static_cast<unsigned>(regs[i]);
#else
  __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

// XCR0: which register states the OS saves on a context switch. Only call with OSXSAVE set.
static unsigned long long xcr0() {
#if defined(_MSC_VER) && !defined(__clang__)
  return _xgetbv(0);
#else
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
#endif
}

// AVX2, F16C and FMA in the CPU, and YMM state saved by the OS (without that, as under some
// hypervisors, AVX instructions fault even where cpuid lists them).
static bool cpu_has_avx2() {
  static const bool has = [] {
    unsigned r[4];
    cpuid(0, 0, r);
    if (r[0] < 7) return false;
    cpuid(1, 0, r);
    const bool fma = r[2] & (1u << 12), osxsave = r[2] & (1u << 27), avx = r[2] & (1u << 28),
               f16c = r[2] & (1u << 29);
    if (!(fma && osxsave && avx && f16c)) return false;
    if ((xcr0() & 0x6) != 0x6) return false;  // XMM and YMM state
    cpuid(7, 0, r);
    return (r[1] & (1u << 5)) != 0;  // AVX2
  }();
  return has;
}
#endif

namespace {
KernelSet g_kernels;
std::once_flag g_once;

bool fill_by_name(KernelSet& ks, const char* name) {
  if (std::strcmp(name, "scalar") == 0) { fill_scalar(ks); return true; }
#if defined(MPSLAYOUT_X86)
  if (std::strcmp(name, "sse2") == 0) { fill_sse2(ks); return true; }
  if (std::strcmp(name, "avx2") == 0) {
    if (!cpu_has_avx2()) return false;
    fill_avx2(ks);
    return true;
  }
  if (std::strcmp(name, "auto") == 0) {
    if (cpu_has_avx2()) fill_avx2(ks); else fill_sse2(ks);
    return true;
  }
#elif defined(MPSLAYOUT_NEON)
  if (std::strcmp(name, "neon") == 0 || std::strcmp(name, "auto") == 0) { fill_neon(ks); return true; }
#else
  if (std::strcmp(name, "auto") == 0) { fill_scalar(ks); return true; }
#endif
  return false;
}

void init_once() {
  const char* env = std::getenv("MPSLAYOUT_ISA");
  if (env == nullptr || *env == '\0' || !fill_by_name(g_kernels, env)) fill_by_name(g_kernels, "auto");
}
}  // namespace

MPSL_HOT const KernelSet& kernels() {
  std::call_once(g_once, init_once);
  return g_kernels;
}

bool select_isa(const char* name) {
  std::call_once(g_once, init_once);
  KernelSet ks{};
  if (!fill_by_name(ks, name)) return false;
  g_kernels = ks;  // only called from Python while no conversion runs (module init, tests)
  return true;
}

const char* const* available_isas(int* count) {
#if defined(MPSLAYOUT_X86)
  static const char* const with_avx2[] = {"scalar", "sse2", "avx2"};
  static const char* const without[] = {"scalar", "sse2"};
  if (cpu_has_avx2()) { *count = 3; return with_avx2; }
  *count = 2;
  return without;
#elif defined(MPSLAYOUT_NEON)
  static const char* const with_neon[] = {"scalar", "neon"};
  *count = 2;
  return with_neon;
#else
  static const char* const only[] = {"scalar"};
  *count = 1;
  return only;
#endif
}

}  // namespace mpslayout
