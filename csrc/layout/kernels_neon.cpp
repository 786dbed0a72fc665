// NEON micro-kernels for AArch64 (Apple Silicon, Graviton, ...), where Advanced SIMD and the
// float16 conversions FCVTN/FCVTL are part of the baseline: dispatch.cpp picks them without a
// run-time check. Compiles to nothing for other architectures (macOS universal2 builds).
//
// Fused float16 casts: the hardware rounds to nearest even (the default FPCR, as the scalar
// path) but quiets signalling NaNs, where numpy keeps them signalling; a group holding any
// NaN therefore takes the scalar conversion, as on x86. bfloat16 is integer arithmetic and
// needs no fallback.
#include "kernels.hpp"
#if defined(MPSLAYOUT_NEON)
#include <arm_neon.h>

#include <cstring>
#include <type_traits>
#include "kernels_macro.hpp"
#include "kernels_scalar.hpp"

namespace mpslayout {
namespace {

using F32F16 = Convert<Cast::F32toF16>;
using F16F32 = Convert<Cast::F16toF32>;

inline const float* fp(const char* p) { return reinterpret_cast<const float*>(p); }
inline const uint16_t* hp(const char* p) { return reinterpret_cast<const uint16_t*>(p); }
inline const uint32_t* up(const char* p) { return reinterpret_cast<const uint32_t*>(p); }
inline float* fp(char* p) { return reinterpret_cast<float*>(p); }
inline uint16_t* hp(char* p) { return reinterpret_cast<uint16_t*>(p); }
inline uint32_t* up(char* p) { return reinterpret_cast<uint32_t*>(p); }

// All-ones lanes where v is not NaN; the AND of such masks has a zero lane iff any is NaN.
inline uint32x4_t ordered(float32x4_t v) { return vceqq_f32(v, v); }
inline bool any_nan(uint32x4_t ordered_mask) { return vminvq_u32(ordered_mask) == 0; }
inline bool any_nan(float32x4_t a, float32x4_t b, float32x4_t c, float32x4_t d) {
  return any_nan(vandq_u32(vandq_u32(ordered(a), ordered(b)), vandq_u32(ordered(c), ordered(d))));
}

inline uint16x4_t to_f16(float32x4_t v) { return vreinterpret_u16_f16(vcvt_f16_f32(v)); }
inline float32x4_t from_f16(uint16x4_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(h)); }

// 4x4 transpose of 32-bit lanes: rows r0..r3 become columns.
inline void transpose4(float32x4_t& r0, float32x4_t& r1, float32x4_t& r2, float32x4_t& r3) {
  const float32x4_t t0 = vtrn1q_f32(r0, r1), t1 = vtrn2q_f32(r0, r1);
  const float32x4_t t2 = vtrn1q_f32(r2, r3), t3 = vtrn2q_f32(r2, r3);
  const float64x2_t u0 = vreinterpretq_f64_f32(t0), u1 = vreinterpretq_f64_f32(t1);
  const float64x2_t u2 = vreinterpretq_f64_f32(t2), u3 = vreinterpretq_f64_f32(t3);
  r0 = vreinterpretq_f32_f64(vtrn1q_f64(u0, u2));
  r1 = vreinterpretq_f32_f64(vtrn1q_f64(u1, u3));
  r2 = vreinterpretq_f32_f64(vtrn2q_f64(u0, u2));
  r3 = vreinterpretq_f32_f64(vtrn2q_f64(u1, u3));
}

// One 4x4 block, source rows d (4 consecutive a's each) to destination rows a, for a 4-byte
// copy or a fused float16 cast. Returns false when the block must take the scalar path (a
// NaN lane in a cast).
template <Op OP> inline bool block4(const char* s, int64_t ssd, char* d, int64_t dsa) {
  float32x4_t r0, r1, r2, r3;
  if constexpr (OP == kF16F32) {
    r0 = from_f16(vld1_u16(hp(s)));
    r1 = from_f16(vld1_u16(hp(s + ssd)));
    r2 = from_f16(vld1_u16(hp(s + 2 * ssd)));
    r3 = from_f16(vld1_u16(hp(s + 3 * ssd)));
  } else {
    r0 = vld1q_f32(fp(s));
    r1 = vld1q_f32(fp(s + ssd));
    r2 = vld1q_f32(fp(s + 2 * ssd));
    r3 = vld1q_f32(fp(s + 3 * ssd));
  }
  if constexpr (OP != kCopy4) {
    if (any_nan(r0, r1, r2, r3)) return false;
  }
  transpose4(r0, r1, r2, r3);
  if constexpr (OP == kF32F16) {
    vst1_u16(hp(d), to_f16(r0));
    vst1_u16(hp(d + dsa), to_f16(r1));
    vst1_u16(hp(d + 2 * dsa), to_f16(r2));
    vst1_u16(hp(d + 3 * dsa), to_f16(r3));
  } else {
    vst1q_f32(fp(d), r0);
    vst1q_f32(fp(d + dsa), r1);
    vst1q_f32(fp(d + 2 * dsa), r2);
    vst1q_f32(fp(d + 3 * dsa), r3);
  }
  return true;
}

// 8x8 transpose of 16-bit lanes (float16, bfloat16, int16 copies): three rounds of TRN.
inline void block8x8_16(const char* s, int64_t ssd, char* d, int64_t dsa) {
  uint16x8_t r[8];
  for (int k = 0; k < 8; ++k) r[k] = vld1q_u16(hp(s + k * ssd));
  uint32x4_t t[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = vreinterpretq_u32_u16(vtrn1q_u16(r[k], r[k + 1]));
    t[k + 1] = vreinterpretq_u32_u16(vtrn2q_u16(r[k], r[k + 1]));
  }
  uint64x2_t u[8];
  for (int k = 0; k < 8; k += 4) {
    u[k] = vreinterpretq_u64_u32(vtrn1q_u32(t[k], t[k + 2]));
    u[k + 1] = vreinterpretq_u64_u32(vtrn1q_u32(t[k + 1], t[k + 3]));
    u[k + 2] = vreinterpretq_u64_u32(vtrn2q_u32(t[k], t[k + 2]));
    u[k + 3] = vreinterpretq_u64_u32(vtrn2q_u32(t[k + 1], t[k + 3]));
  }
  for (int k = 0; k < 4; ++k) {
    vst1q_u16(hp(d + k * dsa), vreinterpretq_u16_u64(vtrn1q_u64(u[k], u[k + 4])));
    vst1q_u16(hp(d + (k + 4) * dsa), vreinterpretq_u16_u64(vtrn2q_u64(u[k], u[k + 4])));
  }
}

// 2x2 transpose of 8-byte elements (float64, int64, complex64).
inline void block2x2_64(const char* s, int64_t ssd, char* d, int64_t dsa) {
  const uint64x2_t r0 = vld1q_u64(reinterpret_cast<const uint64_t*>(s));
  const uint64x2_t r1 = vld1q_u64(reinterpret_cast<const uint64_t*>(s + ssd));
  vst1q_u64(reinterpret_cast<uint64_t*>(d), vtrn1q_u64(r0, r1));
  vst1q_u64(reinterpret_cast<uint64_t*>(d + dsa), vtrn2q_u64(r0, r1));
}

// N source streams (N = 2, 3, 4) interleaved into packed destination rows of N: the
// structure stores ST2/ST3/ST4 do the transpose. 4-channel slices (MPSImage, NC4HW4) and
// RGB first-layer weights are the common cases. (The structures are filled lane by lane:
// clang's vstN are macros, which take no braced initialisers.)
template <int N> struct Interleave;
#define MPSL_INTERLEAVE(N)                                                                \
  template <> struct Interleave<N> {                                                      \
    static void st(uint32_t* p, const float32x4_t* v) {                                   \
      uint32x4x##N##_t x;                                                                 \
      for (int k = 0; k < N; ++k) x.val[k] = vreinterpretq_u32_f32(v[k]);                 \
      vst##N##q_u32(p, x);                                                                \
    }                                                                                     \
    static void st(uint16_t* p, const uint16x8_t* v) {                                    \
      uint16x8x##N##_t x;                                                                 \
      for (int k = 0; k < N; ++k) x.val[k] = v[k];                                        \
      vst##N##q_u16(p, x);                                                                \
    }                                                                                     \
    static void st(uint16_t* p, const uint16x4_t* v) {                                    \
      uint16x4x##N##_t x;                                                                 \
      for (int k = 0; k < N; ++k) x.val[k] = v[k];                                        \
      vst##N##_u16(p, x);                                                                 \
    }                                                                                     \
  };
MPSL_INTERLEAVE(2)
MPSL_INTERLEAVE(3)
MPSL_INTERLEAVE(4)
#undef MPSL_INTERLEAVE

// Element (a, k) read at src + a*es + k*ssd, written packed at dst + (a*N + k)*ed.
template <class K, int N> void interleave(const char* src, int64_t ssd, char* dst, int64_t na) {
  constexpr int64_t es = sizeof(typename K::S), ed = sizeof(typename K::D);
  constexpr int64_t step = es == 2 && ed == 2 ? 8 : 4;  // a's per vector
  int64_t a = 0;
  for (; a + step <= na; a += step) {
    const char* s = src + a * es;
    char* d = dst + a * N * ed;
    if constexpr (std::is_same<K, Copy<uint16_t>>::value) {
      uint16x8_t v[N];
      for (int k = 0; k < N; ++k) v[k] = vld1q_u16(hp(s + k * ssd));
      Interleave<N>::st(hp(d), v);
    } else {
      float32x4_t v[N];
      uint32x4_t ok = vdupq_n_u32(~0u);
      for (int k = 0; k < N; ++k) {
        if constexpr (std::is_same<K, F16F32>::value)
          v[k] = from_f16(vld1_u16(hp(s + k * ssd)));
        else
          v[k] = vld1q_f32(fp(s + k * ssd));
        if constexpr (!std::is_same<K, Copy<uint32_t>>::value) ok = vandq_u32(ok, ordered(v[k]));
      }
      if (!std::is_same<K, Copy<uint32_t>>::value && any_nan(ok)) {
        scalar::tile_narrow<K, N>(s, ssd, d, N * ed, step);
      } else if constexpr (std::is_same<K, F32F16>::value) {
        uint16x4_t h[N];
        for (int k = 0; k < N; ++k) h[k] = to_f16(v[k]);
        Interleave<N>::st(hp(d), h);
      } else {
        Interleave<N>::st(up(d), v);
      }
    }
  }
  scalar::tile_narrow<K, N>(src + a * es, ssd, dst + a * N * ed, N * ed, na - a);
}

// The tile kernel for 4-byte copies and the fused float16 casts: packed narrow destinations
// interleave, everything else goes through 4x4 blocks (shifted back over their neighbours at
// the edges, see macro_tile).
template <Op OP, class K> void tile4(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  constexpr int64_t ed = sizeof(typename K::D);
  if (dsa == nd * ed) {
    if (nd == 4) return interleave<K, 4>(src, ssd, dst, na);
    if (nd == 3) return interleave<K, 3>(src, ssd, dst, na);
    if (nd == 2) return interleave<K, 2>(src, ssd, dst, na);
  }
  macro_tile<K, 4>(src, ssd, dst, dsa, na, nd, [](const char* s, int64_t ss, char* d, int64_t ds) {
    if (!block4<OP>(s, ss, d, ds)) scalar::tile<K>(s, ss, d, ds, 4, 4);
  });
}

void tile_copy2(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  using K = Copy<uint16_t>;
  if (dsa == nd * 2) {
    if (nd == 4) return interleave<K, 4>(src, ssd, dst, na);
    if (nd == 3) return interleave<K, 3>(src, ssd, dst, na);
    if (nd == 2) return interleave<K, 2>(src, ssd, dst, na);
  }
  macro_tile<K, 8>(src, ssd, dst, dsa, na, nd, block8x8_16);
}

void tile_copy8(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  macro_tile<Copy<uint64_t>, 2>(src, ssd, dst, dsa, na, nd, block2x2_64);
}

// Rows: 8 elements per step; a row's last partial group reuses a full group shifted back
// over values already written (rows of 8 or more), shorter rows go scalar.
template <class K, class Group> void row8(const char* src, char* dst, int64_t n, Group group) {
  constexpr int64_t es = sizeof(typename K::S), ed = sizeof(typename K::D);
  if (n < 8) return scalar::row<K>(src, dst, n);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) group(src + es * i, dst + ed * i);
  if (i < n) group(src + es * (n - 8), dst + ed * (n - 8));
}

void row_f32_f16(const char* src, char* dst, int64_t n) {
  row8<F32F16>(src, dst, n, [](const char* s, char* d) {
    const float32x4_t lo = vld1q_f32(fp(s)), hi = vld1q_f32(fp(s + 16));
    if (any_nan(vandq_u32(ordered(lo), ordered(hi)))) return scalar::row<F32F16>(s, d, 8);
    vst1q_u16(hp(d), vreinterpretq_u16_f16(vcvt_high_f16_f32(vcvt_f16_f32(lo), hi)));
  });
}

void row_f16_f32(const char* src, char* dst, int64_t n) {
  row8<F16F32>(src, dst, n, [](const char* s, char* d) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(hp(s)));
    const float32x4_t lo = vcvt_f32_f16(vget_low_f16(h)), hi = vcvt_high_f32_f16(h);
    if (any_nan(vandq_u32(ordered(lo), ordered(hi)))) return scalar::row<F16F32>(s, d, 8);
    vst1q_f32(fp(d), lo);
    vst1q_f32(fp(d + 16), hi);
  });
}

// float64 -> float32: FCVTN rounds and treats NaNs as the scalar FCVT the portable path
// compiles to (same FPCR), so no lane needs the fallback.
void row_f64_f32(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float64x2_t lo = vld1q_f64(reinterpret_cast<const double*>(src + 8 * i));
    const float64x2_t hi = vld1q_f64(reinterpret_cast<const double*>(src + 8 * i + 16));
    vst1q_f32(fp(dst + 4 * i), vcvt_high_f32_f64(vcvt_f32_f64(lo), hi));
  }
  scalar::row<Convert<Cast::F64toF32>>(src + 8 * i, dst + 4 * i, n - i);
}

// float32 -> bfloat16 as cast.hpp's f32_to_bf16: round to nearest even on the bits, NaN ->
// the quiet NaN 0x7fc0 with the input's sign.
inline uint16x4_t bf16_of(uint32x4_t b) {
  const uint32x4_t nan = vcgtq_u32(vandq_u32(b, vdupq_n_u32(0x7fffffffu)), vdupq_n_u32(0x7f800000u));
  const uint32x4_t lsb = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
  const uint16x4_t r = vshrn_n_u32(vaddq_u32(b, vaddq_u32(vdupq_n_u32(0x7fffu), lsb)), 16);
  const uint16x4_t qnan = vorr_u16(vdup_n_u16(0x7fc0u), vand_u16(vshrn_n_u32(b, 16), vdup_n_u16(0x8000u)));
  return vbsl_u16(vmovn_u32(nan), qnan, r);
}

void row_f32_bf16(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x4_t lo = bf16_of(vld1q_u32(up(src + 4 * i)));
    const uint16x4_t hi = bf16_of(vld1q_u32(up(src + 4 * i + 16)));
    vst1q_u16(hp(dst + 2 * i), vcombine_u16(lo, hi));
  }
  for (; i + 4 <= n; i += 4) vst1_u16(hp(dst + 2 * i), bf16_of(vld1q_u32(up(src + 4 * i))));
  scalar::row<Convert<Cast::F32toBF16>>(src + 4 * i, dst + 2 * i, n - i);
}

void row_bf16_f32(const char* src, char* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(hp(src + 2 * i));
    vst1q_u32(up(dst + 4 * i), vshll_n_u16(vget_low_u16(h), 16));
    vst1q_u32(up(dst + 4 * i + 16), vshll_high_n_u16(h, 16));
  }
  scalar::row<Convert<Cast::BF16toF32>>(src + 2 * i, dst + 4 * i, n - i);
}

}  // namespace

void fill_neon(KernelSet& ks) {
  fill_scalar(ks);
  ks.isa = "neon";
  ks.tile[kCopy2] = tile_copy2;
  ks.tile[kCopy4] = tile4<kCopy4, Copy<uint32_t>>;
  ks.tile[kCopy8] = tile_copy8;
  ks.tile[kF32F16] = tile4<kF32F16, F32F16>;
  ks.tile[kF16F32] = tile4<kF16F32, F16F32>;
  // No streaming variant: AArch64's non-temporal STNP is only a hint, not exposed by ACLE.
  for (int i = 0; i < kNumOps; ++i) ks.staged_tile[i] = ks.stream_tile[i] = ks.tile[i];
  ks.row[kF32F16] = row_f32_f16;
  ks.row[kF16F32] = row_f16_f32;
  ks.row[kF64F32] = row_f64_f32;
  ks.row[kF32BF16] = row_f32_bf16;
  ks.row[kBF16F32] = row_bf16_f32;
  // libc's memcpy: no NEON loop measured; no streaming either (above)
  for (int i = 0; i < kNumOps; ++i) ks.copy_row[i] = ks.stream_row[i] = ks.row[i];
}

}  // namespace mpslayout
#endif  // MPSLAYOUT_NEON
