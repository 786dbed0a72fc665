// Element conversions, bit-exact with numpy's astype (float16) and ml_dtypes (bfloat16).
// These scalar forms are the reference that every SIMD kernel falls back to for lanes whose
// hardware result would differ (signalling NaNs).
#pragma once
#include <cstdint>
#include <cstring>

namespace mpslayout {

enum class Cast : int {
  None = 0,
  F32toF16 = 1,
  F16toF32 = 2,
  F64toF32 = 3,
  F32toBF16 = 4,
  BF16toF32 = 5,
};

// Inline functions and templates in headers are compiled into every file that includes
// them, with that file's flags; the linker then keeps one copy. Where a whole file is built
// for a wider instruction set (MSVC's /arch:AVX2 on kernels_avx2.cpp) that copy could be
// the AVX2 one and run on any CPU. Such a file defines MPSLAYOUT_ISA_NS before including
// anything, so its copies get their own names (as PyTorch's CPU_CAPABILITY namespaces do).
#if !defined(MPSLAYOUT_ISA_NS)
#define MPSLAYOUT_ISA_NS baseline
#endif
inline namespace MPSLAYOUT_ISA_NS {

inline int cast_src_size(Cast c) {
  switch (c) {
    case Cast::F32toF16: case Cast::F32toBF16: return 4;
    case Cast::F16toF32: case Cast::BF16toF32: return 2;
    case Cast::F64toF32: return 8;
    default: return 0;
  }
}
inline int cast_dst_size(Cast c) {
  switch (c) {
    case Cast::F32toF16: case Cast::F32toBF16: return 2;
    case Cast::F16toF32: case Cast::BF16toF32: case Cast::F64toF32: return 4;
    default: return 0;
  }
}

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// float32 -> float16, round to nearest even, overflow to inf, subnormal results exact.
// NaN follows numpy: the payload is truncated (kept non-zero) and a signalling NaN stays
// signalling, where the F16C instruction would set the quiet bit.
inline uint16_t f32_to_f16(uint32_t f) {
  const uint16_t sign = static_cast<uint16_t>((f >> 16) & 0x8000u);
  const uint32_t a = f & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or NaN
    if (a == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    uint16_t r = static_cast<uint16_t>(0x7c00u + ((a & 0x007fffffu) >> 13));
    if (r == 0x7c00u) r++;
    return static_cast<uint16_t>(sign | r);
  }
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520
  if (a < 0x38800000u) {  // result is subnormal or zero (|x| < 2^-14)
    if (a < 0x33000000u) return sign;  // below half the smallest subnormal: +-0
    const uint32_t e = a >> 23;                    // 102..112
    const uint32_t m = (a & 0x007fffffu) | 0x00800000u;
    const uint32_t shift = 126u - e;               // 14..24: keeps bits of 2^-24 units
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return static_cast<uint16_t>(sign | q);
  }
  // normal result: rebias exponent, round mantissa to 10 bits (carry may bump the exponent)
  uint32_t r = a - 0x38000000u;  // exponent rebias 127 -> 15, in place
  const uint32_t rem = r & 0x1fffu;
  r >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
  return static_cast<uint16_t>(sign | r);
}

// float16 -> float32 (exact); NaN payloads are kept, signalling stays signalling (numpy).
inline uint32_t f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = h & 0x7c00u;
  uint32_t m = h & 0x03ffu;
  if (e == 0x7c00u) return sign | 0x7f800000u | (m << 13);
  if (e != 0) return sign | ((static_cast<uint32_t>(h & 0x7fffu) + 0x1c000u) << 13);
  if (m == 0) return sign;
  uint32_t exp = 113;  // subnormal: normalise
  while ((m & 0x0400u) == 0) { m <<= 1; exp--; }
  return sign | (exp << 23) | ((m & 0x03ffu) << 13);
}

// float32 -> bfloat16 as ml_dtypes (Eigen): round to nearest even; NaN -> canonical quiet
// NaN with the input's sign.
inline uint16_t f32_to_bf16(uint32_t f) {
  if ((f & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((f & 0x80000000u) ? 0xffc0u : 0x7fc0u);
  const uint32_t lsb = (f >> 16) & 1u;
  return static_cast<uint16_t>((f + 0x7fffu + lsb) >> 16);
}

inline uint32_t bf16_to_f32(uint16_t h) { return static_cast<uint32_t>(h) << 16; }

// One element of a conversion, selected at compile time.
template <Cast C> struct Convert;
template <> struct Convert<Cast::F32toF16> {
  using S = uint32_t; using D = uint16_t;
  static D apply(S s) { return f32_to_f16(s); }
};
template <> struct Convert<Cast::F16toF32> {
  using S = uint16_t; using D = uint32_t;
  static D apply(S s) { return f16_to_f32(s); }
};
template <> struct Convert<Cast::F64toF32> {
  using S = double; using D = float;
  static D apply(S s) { return static_cast<float>(s); }
};
template <> struct Convert<Cast::F32toBF16> {
  using S = uint32_t; using D = uint16_t;
  static D apply(S s) { return f32_to_bf16(s); }
};
template <> struct Convert<Cast::BF16toF32> {
  using S = uint16_t; using D = uint32_t;
  static D apply(S s) { return bf16_to_f32(s); }
};

// Plain copies, by element size.
template <typename T> struct Copy {
  using S = T; using D = T;
  static D apply(S s) { return s; }
};

}  // inline namespace MPSLAYOUT_ISA_NS

}  // namespace mpslayout
