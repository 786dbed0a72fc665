// Picks the instruction set once, at run time (cpuid), never at compile time: the same
// wheel runs on any x86-64 and builds on arm64 with the portable kernels.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include "kernels.hpp"
#include "kernels_scalar.hpp"
#if defined(MPSLAYOUT_X86)
#include <emmintrin.h>
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
  for (int i = 0; i < kNumOps; ++i) ks.stream_tile[i] = ks.tile[i];
}

#if defined(MPSLAYOUT_X86)
namespace {
// 4x4 transposes of 4-byte elements: SSE2 is part of every x86-64.
void tile4_sse2(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  for (int64_t a1 = 0; a1 < na; a1 += 32) {
    const int64_t a1e = std::min(na, a1 + 32);
    for (int64_t d0 = 0; d0 < nd; d0 += 4) {
      if (d0 + 4 > nd) {
        scalar::tile<Copy<uint32_t>>(src + d0 * ssd + a1 * 4, ssd, dst + a1 * dsa + d0 * 4, dsa, a1e - a1, nd - d0);
        continue;
      }
      int64_t a0 = a1;
      for (; a0 + 4 <= a1e; a0 += 4) {
        const char* s = src + d0 * ssd + a0 * 4;
        __m128 r0 = _mm_loadu_ps(reinterpret_cast<const float*>(s));
        __m128 r1 = _mm_loadu_ps(reinterpret_cast<const float*>(s + ssd));
        __m128 r2 = _mm_loadu_ps(reinterpret_cast<const float*>(s + 2 * ssd));
        __m128 r3 = _mm_loadu_ps(reinterpret_cast<const float*>(s + 3 * ssd));
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
        char* d = dst + a0 * dsa + d0 * 4;
        _mm_storeu_ps(reinterpret_cast<float*>(d), r0);
        _mm_storeu_ps(reinterpret_cast<float*>(d + dsa), r1);
        _mm_storeu_ps(reinterpret_cast<float*>(d + 2 * dsa), r2);
        _mm_storeu_ps(reinterpret_cast<float*>(d + 3 * dsa), r3);
      }
      if (a0 < a1e)
        scalar::tile<Copy<uint32_t>>(src + d0 * ssd + a0 * 4, ssd, dst + a0 * dsa + d0 * 4, dsa, a1e - a0, 4);
    }
  }
}
}  // namespace

void fill_sse2(KernelSet& ks) {
  fill_scalar(ks);
  ks.isa = "sse2";
  ks.tile[kCopy4] = tile4_sse2;
  ks.stream_tile[kCopy4] = tile4_sse2;
}

static bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
         __builtin_cpu_supports("fma");
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

const KernelSet& kernels() {
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
#else
  static const char* const only[] = {"scalar"};
  *count = 1;
  return only;
#endif
}

}  // namespace mpslayout
