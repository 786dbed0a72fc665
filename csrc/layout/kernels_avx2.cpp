// AVX2 + F16C micro-kernels. This file alone is compiled with -mavx2 -mf16c; its functions
// are reached only through the table that dispatch.cpp fills after a cpuid check.
#include <immintrin.h>
#include "kernels.hpp"
#include "kernels_scalar.hpp"

namespace mpslayout {
namespace {

inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5,
                       __m256& r6, __m256& r7) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// True if any lane is a float32 signalling NaN (F16C would quiet it; numpy does not).
inline bool any_snan32(__m256 v) {
  const __m256i b = _mm256_castps_si256(v);
  const __m256i abs = _mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff));
  const __m256i nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f800000));
  const __m256i quiet = _mm256_and_si256(b, _mm256_set1_epi32(0x00400000));
  const __m256i snan = _mm256_andnot_si256(_mm256_cmpeq_epi32(quiet, _mm256_set1_epi32(0x00400000)), nan);
  return !_mm256_testz_si256(snan, snan);
}
// True if any lane is a float16 signalling NaN.
inline bool any_snan16(__m128i h) {
  const __m128i abs = _mm_and_si128(h, _mm_set1_epi16(0x7fff));
  const __m128i nan = _mm_cmpgt_epi16(abs, _mm_set1_epi16(0x7c00));
  const __m128i quiet = _mm_and_si128(h, _mm_set1_epi16(0x0200));
  const __m128i snan = _mm_andnot_si128(_mm_cmpeq_epi16(quiet, _mm_set1_epi16(0x0200)), nan);
  return !_mm_testz_si128(snan, snan);
}

constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// One 8x8 block: src rows are d (8 consecutive a's each), dst rows are a.
// Returns false when the block must take the scalar path (a signalling NaN lane).
template <Op OP> inline bool block8(const char* s, int64_t ssd, char* d, int64_t dsa) {
  __m256 r0, r1, r2, r3, r4, r5, r6, r7;
  if constexpr (OP == kF16F32) {
    const __m128i h0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i h1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + ssd));
    const __m128i h2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * ssd));
    const __m128i h3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 3 * ssd));
    const __m128i h4 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 4 * ssd));
    const __m128i h5 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 5 * ssd));
    const __m128i h6 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 6 * ssd));
    const __m128i h7 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 7 * ssd));
    if (any_snan16(h0) || any_snan16(h1) || any_snan16(h2) || any_snan16(h3) || any_snan16(h4) ||
        any_snan16(h5) || any_snan16(h6) || any_snan16(h7))
      return false;
    r0 = _mm256_cvtph_ps(h0); r1 = _mm256_cvtph_ps(h1); r2 = _mm256_cvtph_ps(h2); r3 = _mm256_cvtph_ps(h3);
    r4 = _mm256_cvtph_ps(h4); r5 = _mm256_cvtph_ps(h5); r6 = _mm256_cvtph_ps(h6); r7 = _mm256_cvtph_ps(h7);
  } else {
    r0 = _mm256_loadu_ps(reinterpret_cast<const float*>(s));
    r1 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + ssd));
    r2 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 2 * ssd));
    r3 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 3 * ssd));
    r4 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 4 * ssd));
    r5 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 5 * ssd));
    r6 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 6 * ssd));
    r7 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 7 * ssd));
    if constexpr (OP == kF32F16) {
      if (any_snan32(r0) || any_snan32(r1) || any_snan32(r2) || any_snan32(r3) || any_snan32(r4) ||
          any_snan32(r5) || any_snan32(r6) || any_snan32(r7))
        return false;
    }
  }
  transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
  if constexpr (OP == kF32F16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm256_cvtps_ph(r0, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + dsa), _mm256_cvtps_ph(r1, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * dsa), _mm256_cvtps_ph(r2, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 3 * dsa), _mm256_cvtps_ph(r3, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 4 * dsa), _mm256_cvtps_ph(r4, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 5 * dsa), _mm256_cvtps_ph(r5, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 6 * dsa), _mm256_cvtps_ph(r6, kRound));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 7 * dsa), _mm256_cvtps_ph(r7, kRound));
  } else {
    _mm256_storeu_ps(reinterpret_cast<float*>(d), r0);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + dsa), r1);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + 2 * dsa), r2);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + 3 * dsa), r3);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + 4 * dsa), r4);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + 5 * dsa), r5);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + 6 * dsa), r6);
    _mm256_storeu_ps(reinterpret_cast<float*>(d + 7 * dsa), r7);
  }
  return true;
}

template <Op OP> struct OpTraits;
template <> struct OpTraits<kCopy4> { using K = Copy<uint32_t>; };
template <> struct OpTraits<kF32F16> { using K = Convert<Cast::F32toF16>; };
template <> struct OpTraits<kF16F32> { using K = Convert<Cast::F16toF32>; };

// Macro-kernel: bands of 32 rows of a; inside a band, 8-wide columns of d, 8x8 blocks.
template <Op OP> void tile8(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  using K = typename OpTraits<OP>::K;
  constexpr int64_t es = sizeof(typename K::S), ed = sizeof(typename K::D);
  for (int64_t a1 = 0; a1 < na; a1 += 32) {
    const int64_t a1e = std::min(na, a1 + 32);
    int64_t d0 = 0;
    for (; d0 + 8 <= nd; d0 += 8) {
      int64_t a0 = a1;
      for (; a0 + 8 <= a1e; a0 += 8) {
        const char* s = src + d0 * ssd + a0 * es;
        char* d = dst + a0 * dsa + d0 * ed;
        if (!block8<OP>(s, ssd, d, dsa)) scalar::tile<K>(s, ssd, d, dsa, 8, 8);
      }
      if (a0 < a1e) scalar::tile<K>(src + d0 * ssd + a0 * es, ssd, dst + a0 * dsa + d0 * ed, dsa, a1e - a0, 8);
    }
    if (d0 < nd) scalar::tile<K>(src + d0 * ssd + a1 * es, ssd, dst + a1 * dsa + d0 * ed, dsa, a1e - a1, nd - d0);
  }
}

void row_f32_f16(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(src + 4 * i));
    if (any_snan32(v)) {
      scalar::row<Convert<Cast::F32toF16>>(src + 4 * i, dst + 2 * i, 8);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), _mm256_cvtps_ph(v, kRound));
  }
  scalar::row<Convert<Cast::F32toF16>>(src + 4 * i, dst + 2 * i, n - i);
}

void row_f16_f32(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    if (any_snan16(h)) {
      scalar::row<Convert<Cast::F16toF32>>(src + 2 * i, dst + 4 * i, 8);
      continue;
    }
    _mm256_storeu_ps(reinterpret_cast<float*>(dst + 4 * i), _mm256_cvtph_ps(h));
  }
  scalar::row<Convert<Cast::F16toF32>>(src + 2 * i, dst + 4 * i, n - i);
}

void row_f64_f32(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d v = _mm256_loadu_pd(reinterpret_cast<const double*>(src + 8 * i));
    _mm_storeu_ps(reinterpret_cast<float*>(dst + 4 * i), _mm256_cvtpd_ps(v));
  }
  scalar::row<Convert<Cast::F64toF32>>(src + 8 * i, dst + 4 * i, n - i);
}

void row_f32_bf16(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff);
  const __m256i qnan = _mm256_set1_epi32(0x7fc0), sign16 = _mm256_set1_epi32(0x8000);
  for (; i + 8 <= n; i += 8) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 4 * i));
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, abs_mask), inf);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(bias, lsb)), 16);
    const __m256i nanv = _mm256_or_si256(qnan, _mm256_and_si256(_mm256_srli_epi32(b, 16), sign16));
    r = _mm256_blendv_epi8(r, nanv, nan);
    // pack 8 x u32 (each < 2^16) into 8 x u16
    const __m256i packed = _mm256_packus_epi32(r, r);  // lanes: [0..3,0..3 | 4..7,4..7]
    const __m256i ordered = _mm256_permute4x64_epi64(packed, 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), _mm256_castsi256_si128(ordered));
  }
  scalar::row<Convert<Cast::F32toBF16>>(src + 4 * i, dst + 2 * i, n - i);
}

void row_bf16_f32(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 4 * i),
                        _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  scalar::row<Convert<Cast::BF16toF32>>(src + 2 * i, dst + 4 * i, n - i);
}

}  // namespace

void fill_avx2(KernelSet& ks) {
  fill_sse2(ks);
  ks.isa = "avx2";
  ks.tile[kCopy4] = tile8<kCopy4>;
  ks.tile[kF32F16] = tile8<kF32F16>;
  ks.tile[kF16F32] = tile8<kF16F32>;
  ks.row[kF32F16] = row_f32_f16;
  ks.row[kF16F32] = row_f16_f32;
  ks.row[kF64F32] = row_f64_f32;
  ks.row[kF32BF16] = row_f32_bf16;
  ks.row[kBF16F32] = row_bf16_f32;
  for (int i = 0; i < kNumOps; ++i) ks.stream_row[i] = ks.row[i];
}

}  // namespace mpslayout
