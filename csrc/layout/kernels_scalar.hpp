// Portable kernels, templated on the element operation. Loads and stores go through
// memcpy: numpy strides need not be multiples of the element size.
#pragma once
#include <algorithm>
#include <cstring>
#include "kernels.hpp"

namespace mpslayout {
inline namespace MPSLAYOUT_ISA_NS {  // see cast.hpp
namespace scalar {

template <typename T> inline T load(const char* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }
template <typename T> inline void store(char* p, T v) { std::memcpy(p, &v, sizeof(T)); }

template <class K> void row(const char* src, char* dst, int64_t n) {
  using S = typename K::S; using D = typename K::D;
  for (int64_t i = 0; i < n; ++i) store<D>(dst + i * sizeof(D), K::apply(load<S>(src + i * sizeof(S))));
}

inline void row_copy(const char* src, char* dst, int64_t n, int esize) {
  std::memcpy(dst, src, static_cast<size_t>(n) * esize);
}
template <int E> void row_memcpy(const char* src, char* dst, int64_t n) { row_copy(src, dst, n, E); }

// Few destination columns (RGB first layers, 4-channel slices): unrolled, one pass over a.
template <class K, int ND> void tile_narrow(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na) {
  using S = typename K::S; using D = typename K::D;
  for (int64_t a = 0; a < na; ++a) {
    char* drow = dst + a * dsa;
    const char* scol = src + a * static_cast<int64_t>(sizeof(S));
    for (int d = 0; d < ND; ++d) store<D>(drow + d * sizeof(D), K::apply(load<S>(scol + d * ssd)));
  }
}

// Blocked transpose: 8 destination elements per row at a time, 32 rows per band, so that a
// band's source lines and destination lines stay in L1.
template <class K> void tile(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd) {
  using S = typename K::S; using D = typename K::D;
  switch (nd) {
    case 1: return tile_narrow<K, 1>(src, ssd, dst, dsa, na);
    case 2: return tile_narrow<K, 2>(src, ssd, dst, dsa, na);
    case 3: return tile_narrow<K, 3>(src, ssd, dst, dsa, na);
    case 4: return tile_narrow<K, 4>(src, ssd, dst, dsa, na);
    default: break;
  }
  for (int64_t a1 = 0; a1 < na; a1 += 32) {
    const int64_t a1e = std::min(na, a1 + 32);
    for (int64_t d0 = 0; d0 < nd; d0 += 8) {
      const int64_t de = std::min(nd, d0 + 8);
      for (int64_t a = a1; a < a1e; ++a) {
        char* drow = dst + a * dsa;
        const char* scol = src + a * static_cast<int64_t>(sizeof(S));
        for (int64_t d = d0; d < de; ++d)
          store<D>(drow + d * sizeof(D), K::apply(load<S>(scol + d * ssd)));
      }
    }
  }
}

template <class K> void strided(const char* src, int64_t ssa, int64_t ssd, char* dst, int64_t dsa,
                                int64_t dsd, int64_t na, int64_t nd) {
  using S = typename K::S; using D = typename K::D;
  for (int64_t a = 0; a < na; ++a)
    for (int64_t d = 0; d < nd; ++d)
      store<D>(dst + a * dsa + d * dsd, K::apply(load<S>(src + a * ssa + d * ssd)));
}

}  // namespace scalar
}  // inline namespace MPSLAYOUT_ISA_NS
}  // namespace mpslayout

