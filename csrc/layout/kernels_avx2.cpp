// AVX2 + F16C micro-kernels, reached only through the table that dispatch.cpp fills after a
// cpuid check. Compiles to nothing for other architectures (macOS universal2 builds).
#define MPSLAYOUT_ISA_NS avx2  // own names for header code built with AVX2 (see cast.hpp)
#include "kernels.hpp"
#if defined(MPSLAYOUT_X86)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <new>
#include "kernels_scalar.hpp"

// Everything below, and only that, may use AVX2/F16C/FMA: headers above keep the baseline
// instruction set, so inline functions they share with other files stay portable. MSVC has
// no such pragma (and needs none for intrinsics): CMake compiles this file with /arch:AVX2.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,f16c,fma")
#endif

#include "copy_avx2.hpp"
#include "kernels_macro.hpp"

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

constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// True if any lane of a or b is NaN (one compare covers two vectors). NaNs are rare in
// weights, so a block holding one takes the scalar path, which follows numpy exactly.
inline __m256 nan_pair(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_UNORD_Q); }
inline bool any_nan8(__m256 r0, __m256 r1, __m256 r2, __m256 r3, __m256 r4, __m256 r5, __m256 r6,
                     __m256 r7) {
  const __m256 m = _mm256_or_ps(_mm256_or_ps(nan_pair(r0, r1), nan_pair(r2, r3)),
                                _mm256_or_ps(nan_pair(r4, r5), nan_pair(r6, r7)));
  return !_mm256_testz_ps(m, m);
}

// Stores 8 float32 lanes, or (fused cast) the 8 float16 lanes they round to.
template <Op OP> inline void store8(char* d, __m256 v) {
  if constexpr (OP == kF32F16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), _mm256_cvtps_ph(v, kRound));
  else
    _mm256_storeu_ps(reinterpret_cast<float*>(d), v);
}

// One 8x8 block: src rows are d (8 consecutive a's each), dst rows are a.
// Returns false when the block must take the scalar path (a NaN lane in a fused cast).
template <Op OP> inline bool block8(const char* s, int64_t ssd, char* d, int64_t dsa) {
  __m256 c0, c1, c2, c3, c4, c5, c6, c7;  // destination rows (source columns)
  if constexpr (OP == kF16F32) {
    __m256 r0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
    __m256 r1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + ssd)));
    __m256 r2 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 2 * ssd)));
    __m256 r3 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 3 * ssd)));
    __m256 r4 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 4 * ssd)));
    __m256 r5 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 5 * ssd)));
    __m256 r6 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 6 * ssd)));
    __m256 r7 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 7 * ssd)));
    if (any_nan8(r0, r1, r2, r3, r4, r5, r6, r7)) return false;
    transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
    c0 = r0; c1 = r1; c2 = r2; c3 = r3; c4 = r4; c5 = r5; c6 = r6; c7 = r7;
  } else {
    __m256 r0 = _mm256_loadu_ps(reinterpret_cast<const float*>(s));
    __m256 r1 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + ssd));
    __m256 r2 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 2 * ssd));
    __m256 r3 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 3 * ssd));
    __m256 r4 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 4 * ssd));
    __m256 r5 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 5 * ssd));
    __m256 r6 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 6 * ssd));
    __m256 r7 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 7 * ssd));
    if constexpr (OP == kF32F16) {
      if (any_nan8(r0, r1, r2, r3, r4, r5, r6, r7)) return false;
    }
    transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
    c0 = r0; c1 = r1; c2 = r2; c3 = r3; c4 = r4; c5 = r5; c6 = r6; c7 = r7;
  }
  store8<OP>(d, c0);
  store8<OP>(d + dsa, c1);
  store8<OP>(d + 2 * dsa, c2);
  store8<OP>(d + 3 * dsa, c3);
  store8<OP>(d + 4 * dsa, c4);
  store8<OP>(d + 5 * dsa, c5);
  store8<OP>(d + 6 * dsa, c6);
  store8<OP>(d + 7 * dsa, c7);
  return true;
}

// One destination row of 8: element k read at s + k*ssd. Returns false for the scalar
// path (a NaN lane in a fused cast).
template <Op OP> inline bool row8(const char* s, int64_t ssd, char* d) {
  __m256 v;
  // Built in registers: eight scalar stores to a stack array read back as one vector wait
  // for the stores to retire (no store-to-load forwarding across them), ~20 cycles a row.
  if constexpr (OP == kF16F32) {
    uint16_t h[8];
    for (int k = 0; k < 8; ++k) std::memcpy(&h[k], s + k * ssd, 2);
    v = _mm256_cvtph_ps(_mm_setr_epi16(static_cast<short>(h[0]), static_cast<short>(h[1]),
                                       static_cast<short>(h[2]), static_cast<short>(h[3]),
                                       static_cast<short>(h[4]), static_cast<short>(h[5]),
                                       static_cast<short>(h[6]), static_cast<short>(h[7])));
  } else {
    float f[8];
    for (int k = 0; k < 8; ++k) std::memcpy(&f[k], s + k * ssd, 4);
    v = _mm256_setr_ps(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
  }
  if constexpr (OP != kCopy4) {
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    if (!_mm256_testz_ps(nan, nan)) return false;
  }
  store8<OP>(d, v);
  return true;
}

template <Op OP> struct OpTraits;
template <> struct OpTraits<kCopy4> { using K = Copy<uint32_t>; };
template <> struct OpTraits<kF32F16> { using K = Convert<Cast::F32toF16>; };
template <> struct OpTraits<kF16F32> { using K = Convert<Cast::F16toF32>; };


// Four source streams interleaved into packed rows of 4 (MPSImage slices, NC4HW4):
// 8 rows of a per step, 4x8 transpose in registers, 4 full-width stores.
template <Op OP> MPSL_HOT void interleave4(const char* src, int64_t ssd, char* dst, int64_t na) {
  using K = typename OpTraits<OP>::K;
  constexpr int64_t ed = sizeof(typename K::D);
  int64_t a = 0;
  for (; a + 8 <= na; a += 8) {
    const char* s = src + a * 4;
    const __m256 r0 = _mm256_loadu_ps(reinterpret_cast<const float*>(s));
    const __m256 r1 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + ssd));
    const __m256 r2 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 2 * ssd));
    const __m256 r3 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 3 * ssd));
    if constexpr (OP == kF32F16) {
      if (any_nan8(r0, r1, r2, r3, r0, r1, r2, r3)) {
        scalar::tile_narrow<K, 4>(s, ssd, dst + a * 4 * ed, 4 * ed, 8);
        continue;
      }
    }
    const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    char* d = dst + a * 4 * ed;
    store8<OP>(d, _mm256_permute2f128_ps(u0, u1, 0x20));
    store8<OP>(d + 8 * ed, _mm256_permute2f128_ps(u2, u3, 0x20));
    store8<OP>(d + 16 * ed, _mm256_permute2f128_ps(u0, u1, 0x31));
    store8<OP>(d + 24 * ed, _mm256_permute2f128_ps(u2, u3, 0x31));
  }
  scalar::tile_narrow<K, 4>(src + a * 4, ssd, dst + a * 4 * ed, 4 * ed, na - a);
}

// Three source streams interleaved into packed rows of 3 (RGB first-layer weights):
// each output vector is three lane permutes blended together.
template <Op OP> MPSL_HOT void interleave3(const char* src, int64_t ssd, char* dst, int64_t na) {
  using K = typename OpTraits<OP>::K;
  constexpr int64_t ed = sizeof(typename K::D);
  const __m256i ia = _mm256_setr_epi32(0, 0, 0, 1, 1, 1, 2, 2);
  const __m256i ib = _mm256_setr_epi32(2, 3, 3, 3, 4, 4, 4, 5);
  const __m256i ic = _mm256_setr_epi32(5, 5, 6, 6, 6, 7, 7, 7);
  int64_t a = 0;
  for (; a + 8 <= na; a += 8) {
    const char* s = src + a * 4;
    const __m256 r0 = _mm256_loadu_ps(reinterpret_cast<const float*>(s));
    const __m256 r1 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + ssd));
    const __m256 r2 = _mm256_loadu_ps(reinterpret_cast<const float*>(s + 2 * ssd));
    if constexpr (OP == kF32F16) {
      if (any_nan8(r0, r1, r2, r0, r0, r1, r2, r0)) {
        scalar::tile_narrow<K, 3>(s, ssd, dst + a * 3 * ed, 3 * ed, 8);
        continue;
      }
    }
    const __m256 o0 = _mm256_blend_ps(
        _mm256_blend_ps(_mm256_permutevar8x32_ps(r0, ia), _mm256_permutevar8x32_ps(r1, ia), 0x92),
        _mm256_permutevar8x32_ps(r2, ia), 0x24);
    const __m256 o1 = _mm256_blend_ps(
        _mm256_blend_ps(_mm256_permutevar8x32_ps(r0, ib), _mm256_permutevar8x32_ps(r1, ib), 0x24),
        _mm256_permutevar8x32_ps(r2, ib), 0x49);
    const __m256 o2 = _mm256_blend_ps(
        _mm256_blend_ps(_mm256_permutevar8x32_ps(r0, ic), _mm256_permutevar8x32_ps(r1, ic), 0x49),
        _mm256_permutevar8x32_ps(r2, ic), 0x92);
    char* d = dst + a * 3 * ed;
    store8<OP>(d, o0);
    store8<OP>(d + 8 * ed, o1);
    store8<OP>(d + 16 * ed, o2);
  }
  scalar::tile_narrow<K, 3>(src + a * 4, ssd, dst + a * 3 * ed, 3 * ed, na - a);
}

constexpr int64_t kScratchBytes = 192 * 1024;

// One scratch buffer per thread for the staged kernels, allocated at first use and freed
// when the thread exits; nullptr if it cannot be had (the caller then tiles directly).
// Static thread_local arrays would put every kernel's buffer in the module's TLS block
// (megabytes per thread) and cost a __tls_get_addr call per panel; this is one pointer,
// initial-exec: a single %fs-relative load.
struct Scratch {
  char* p = nullptr;
  ~Scratch() { ::operator delete[](p, std::align_val_t(64)); }
};
#if defined(__GNUC__)
#define MPSL_TLS_INITIAL_EXEC __attribute__((tls_model("initial-exec")))
#else
#define MPSL_TLS_INITIAL_EXEC
#endif
inline char* scratch_buffer() {
  static thread_local Scratch s MPSL_TLS_INITIAL_EXEC;
  if (s.p == nullptr)
    s.p = static_cast<char*>(::operator new[](kScratchBytes, std::align_val_t(64), std::nothrow));
  return s.p;
}

// How tile8 writes the destination.
enum class Out {
  kDirect,  // 8x8 blocks straight into the destination
  kStaged,  // the panel built in an L1/L2 buffer, then copied out row by row, in address order
  kStream,  // the same, or eight rows at a time, leaving with non-temporal stores
};

// Macro-kernel: bands of 32 rows of a; inside a band, groups of 8x8 blocks that together
// fill one 64-byte line of each destination row before moving on (so a line is written
// once, not evicted half-done when rows are a power-of-two apart). Edges reuse a full block
// shifted back to overlap its neighbour: rewriting equal values beats a scalar edge loop.
//
// kStaged / kStream: a panel (one conv output channel's (kH*kW, I) block) is transposed
// into a buffer, reading the source in address order, then leaves in address order: one
// write stream instead of kH*kW, which the hardware prefetcher follows. kStream's
// non-temporal stores also skip the read-for-ownership of every destination line (the
// caller fences once at the end, not per panel). Written in transposed order instead,
// streaming stores run at half the speed of ordinary ones on the machines measured.
template <Op OP, Out M> MPSL_HOT void tile8(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  using K = typename OpTraits<OP>::K;
  constexpr int64_t es = sizeof(typename K::S), ed = sizeof(typename K::D);
  constexpr int64_t group = 64 / ed;  // destination elements per cache line
  constexpr int64_t kRowBuffer = 32 * 1024;
  if constexpr (OP != kF16F32) {
    if (nd == 4 && dsa == 4 * ed) return interleave4<OP>(src, ssd, dst, na);
    if (nd == 3 && dsa == 3 * ed) return interleave3<OP>(src, ssd, dst, na);
  }
  if (na < 8 || nd < 8) return scalar::tile<K>(src, ssd, dst, dsa, na, nd);
  const int64_t row_bytes = nd * ed;
  // Moves rows [a0, a0 + 8) and columns [dd, dd + 8) of the tile to d, the destination of
  // (a0, dd), whose rows are `stride` apart. Past the last full block, the block shifts
  // back over rows already done (measured faster than scalar loops even for 1 row left).
  auto move = [&](int64_t a0, int64_t dd, char* d, int64_t stride) {
    const char* s = src + dd * ssd + a0 * es;
    if (a0 + 8 <= na) {
      if (!block8<OP>(s, ssd, d, stride)) scalar::tile<K>(s, ssd, d, stride, 8, 8);
    } else if (a0 + 1 == na) {
      // one row left (3x3, 5x5, 7x7 kernels): gather its 8 values instead of redoing 8 rows
      if (!row8<OP>(s, ssd, d)) scalar::tile<K>(s, ssd, d, stride, 1, 8);
    } else {
      const int64_t back = a0 - (na - 8);
      if (!block8<OP>(s - back * es, ssd, d - back * stride, stride))
        scalar::tile<K>(s - back * es, ssd, d - back * stride, stride, 8, 8);
    }
  };
  // Buffer rows are padded by one line where rows a multiple of 4 KiB apart would share
  // L1 sets, or rows 1-2 KiB apart more of them than the sets' ways hold (the flatten's 49
  // rows of 2 KiB: 2.9x memcpy's time warm instead of 3.8x); otherwise a contiguous
  // destination panel leaves as one block.
  const bool crowded = row_bytes % 4096 == 0 || (row_bytes % 1024 == 0 && na > 16);
  const bool whole = dsa == row_bytes && !crowded;
  const int64_t pstride = whole ? row_bytes : row_bytes + 64;
  char* const scratch = M == Out::kDirect ? nullptr : scratch_buffer();
  if (scratch && na * pstride <= kScratchBytes) {
    // The whole panel fits in L2: read the source in address order (d outer), transpose
    // into the buffer, then copy it out in address order too.
    // Panels usually follow each other (conv weights, the flatten's rows): the one after
    // next is prefetched into L2 while this one is transposed, a strip at a time, so that
    // memory reads while the shuffles run, not only while the stores drain (the flatten:
    // 1.2x memcpy's time -> 1.05x). The next panel's lines are asked for again as this one
    // leaves (T0: into L1; they are mostly in L2 already; a lone panel still gets its
    // successor early). Prefetches are hints, never read: any address will do. A narrowing
    // cast (f32 -> f16) reads twice the bytes it writes: its leaving pass measured slower
    // with the prefetch, and gets none.
    const char* after_next = M == Out::kStream ? src + 2 * nd * ssd : nullptr;
    for (int64_t d0 = 0; d0 < nd; d0 += 8) {
      const int64_t dd = std::min(d0, nd - 8);
      if (after_next)
        for (const char* q = after_next + d0 * ssd; q < after_next + (d0 + 8) * ssd; q += 64)
          _mm_prefetch(q, _MM_HINT_T1);
      for (int64_t a0 = 0; a0 < na; a0 += 8) move(a0, dd, scratch + a0 * pstride + dd * ed, pstride);
    }
    const int64_t pieces = whole ? 1 : na, piece = whole ? na * row_bytes : row_bytes;
    const char* next = es <= ed ? src + nd * ssd : nullptr;
    for (int64_t r = 0; r < pieces; ++r) {
      if constexpr (M == Out::kStream)
        stream_copy<es, ed>(dst + r * dsa, scratch + r * pstride, piece, next ? next + r * piece * es / ed : nullptr);
      else
        plain_copy(dst + r * dsa, scratch + r * pstride, piece);
    }
    return;
  }
  if (scratch && M == Out::kStream && row_bytes * 8 <= kRowBuffer) {
    // Eight whole rows at a time in an L1 buffer (row 0 of the buffer is row a0).
    char* rows = scratch + 8 * 64;  // room for a shifted last block's earlier rows
    for (int64_t a0 = 0; a0 < na; a0 += 8) {
      const int64_t n = std::min<int64_t>(8, na - a0);
      if (n < 8) {
        // shifted block: its earlier rows land before `rows`, in a scratch area
        for (int64_t d0 = 0; d0 < nd; d0 += 8) {
          const int64_t dd = std::min(d0, nd - 8);
          const int64_t back = 8 - n;
          const char* s = src + dd * ssd + (na - 8) * es;
          alignas(32) char tmp[8 * 32];
          if (!block8<OP>(s, ssd, tmp, 32)) scalar::tile<K>(s, ssd, tmp, 32, 8, 8);
          for (int64_t r = back; r < 8; ++r) std::memcpy(rows + (r - back) * row_bytes + dd * ed, tmp + r * 32, 8 * ed);
        }
      } else {
        for (int64_t d0 = 0; d0 < nd; d0 += 8) {
          const int64_t dd = std::min(d0, nd - 8);
          move(a0, dd, rows + dd * ed, row_bytes);
        }
      }
      if (dsa == row_bytes) {
        stream_copy(dst + a0 * dsa, rows, n * row_bytes);
      } else {
        for (int64_t r = 0; r < n; ++r) stream_copy(dst + (a0 + r) * dsa, rows + r * row_bytes, row_bytes);
      }
    }
    return;
  }
  for (int64_t a1 = 0; a1 < na; a1 += 32) {
    const int64_t a1e = std::min(na, a1 + 32);
    for (int64_t dg = 0; dg < nd; dg += group) {
      const int64_t dge = std::min(nd, dg + group);
      for (int64_t a0 = a1; a0 < a1e; a0 += 8) {
        for (int64_t d0 = dg; d0 < dge; d0 += 8) {
          const int64_t dd = std::min(d0, nd - 8);
          move(a0, dd, dst + a0 * dsa + dd * ed, dsa);
        }
      }
    }
  }
}

// 4x4 blocks of 8-byte elements (float64, int64, complex64).
inline void block4x4_64(const char* s, int64_t ssd, char* d, int64_t dsa) {
  const __m256d r0 = _mm256_loadu_pd(reinterpret_cast<const double*>(s));
  const __m256d r1 = _mm256_loadu_pd(reinterpret_cast<const double*>(s + ssd));
  const __m256d r2 = _mm256_loadu_pd(reinterpret_cast<const double*>(s + 2 * ssd));
  const __m256d r3 = _mm256_loadu_pd(reinterpret_cast<const double*>(s + 3 * ssd));
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(reinterpret_cast<double*>(d), _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(reinterpret_cast<double*>(d + dsa), _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(reinterpret_cast<double*>(d + 2 * dsa), _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(reinterpret_cast<double*>(d + 3 * dsa), _mm256_permute2f128_pd(t1, t3, 0x31));
}

void tile8_avx(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  macro_tile<Copy<uint64_t>, 4>(src, ssd, dst, dsa, na, nd, block4x4_64);
}

// Rows with a fused float16 cast: 8 lanes at a time; a row's last partial group reuses a
// full group shifted back over values already written (the scalar conversion, exact in
// software, costs more than the vector for a handful of lanes: dense rows of 100, say).
inline void f32_f16_8(const char* src, char* dst) {
  const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(src));
  const __m256 nan = nan_pair(v, v);
  if (!_mm256_testz_ps(nan, nan)) return scalar::row<Convert<Cast::F32toF16>>(src, dst, 8);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtps_ph(v, kRound));
}

void row_f32_f16(const char* src, char* dst, int64_t n) {
  if (n < 8) return scalar::row<Convert<Cast::F32toF16>>(src, dst, n);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) f32_f16_8(src + 4 * i, dst + 2 * i);
  if (i < n) f32_f16_8(src + 4 * (n - 8), dst + 2 * (n - 8));
}

inline void f16_f32_8(const char* src, char* dst) {
  const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  const __m256 nan = nan_pair(v, v);
  if (!_mm256_testz_ps(nan, nan)) return scalar::row<Convert<Cast::F16toF32>>(src, dst, 8);
  _mm256_storeu_ps(reinterpret_cast<float*>(dst), v);
}

void row_f16_f32(const char* src, char* dst, int64_t n) {
  if (n < 8) return scalar::row<Convert<Cast::F16toF32>>(src, dst, n);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) f16_f32_8(src + 2 * i, dst + 4 * i);
  if (i < n) f16_f32_8(src + 2 * (n - 8), dst + 4 * (n - 8));
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
  ks.tile[kCopy4] = tile8<kCopy4, Out::kDirect>;
  ks.tile[kF32F16] = tile8<kF32F16, Out::kDirect>;
  ks.tile[kF16F32] = tile8<kF16F32, Out::kDirect>;
  for (int i = 0; i < kNumOps; ++i) ks.staged_tile[i] = ks.stream_tile[i] = ks.tile[i];
  ks.staged_tile[kCopy4] = tile8<kCopy4, Out::kStaged>;
  ks.staged_tile[kF32F16] = tile8<kF32F16, Out::kStaged>;
  ks.staged_tile[kF16F32] = tile8<kF16F32, Out::kStaged>;
  ks.stream_tile[kCopy4] = tile8<kCopy4, Out::kStream>;
  ks.stream_tile[kF32F16] = tile8<kF32F16, Out::kStream>;
  ks.stream_tile[kF16F32] = tile8<kF16F32, Out::kStream>;
  ks.tile[kCopy8] = ks.staged_tile[kCopy8] = ks.stream_tile[kCopy8] = tile8_avx;
  ks.row[kF32F16] = row_f32_f16;
  ks.row[kF16F32] = row_f16_f32;
  ks.row[kF64F32] = row_f64_f32;
  ks.row[kF32BF16] = row_f32_bf16;
  ks.row[kBF16F32] = row_bf16_f32;
  for (int i = 0; i < kNumOps; ++i) ks.copy_row[i] = ks.stream_row[i] = ks.row[i];
  ks.copy_row[kCopy1] = copy_row<1>;
  ks.copy_row[kCopy2] = copy_row<2>;
  ks.copy_row[kCopy4] = copy_row<4>;
  ks.copy_row[kCopy8] = copy_row<8>;
  ks.stream_row[kCopy1] = stream_row<1>;
  ks.stream_row[kCopy2] = stream_row<2>;
  ks.stream_row[kCopy4] = stream_row<4>;
  ks.stream_row[kCopy8] = stream_row<8>;
}

}  // namespace mpslayout

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif  // MPSLAYOUT_X86
