// The macro-kernel shared by the SIMD paths without streaming stores. Include it after
// any target pragma: it is compiled for the instruction set of the file that includes it.
#pragma once
#include <algorithm>
#include <cstdint>
#include "kernels_scalar.hpp"

namespace mpslayout {
// Internal linkage: each file compiles its own copy for its own instruction set.
namespace {

// The macro-kernel shared by the SIMD paths without streaming stores: bands of 32 rows of a;
// inside a band, groups of B-wide blocks that fill one 64-byte line of each destination row
// before moving on. Edges reuse a full block shifted back to overlap its neighbour (equal
// values rewritten) instead of a scalar edge loop. Block(s, ssd, d, dsa) moves one BxB block.
template <class K, int B, class Block>
inline void macro_tile(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd,
                       Block block) {
  using S = typename K::S; using D = typename K::D;
  constexpr int64_t es = sizeof(S), ed = sizeof(D);
  constexpr int64_t group = 64 / ed > B ? 64 / ed : B;
  if (na < B || nd < B) return scalar::tile<K>(src, ssd, dst, dsa, na, nd);
  for (int64_t a1 = 0; a1 < na; a1 += 32) {
    const int64_t a1e = std::min(na, a1 + 32);
    for (int64_t dg = 0; dg < nd; dg += group) {
      const int64_t dge = std::min(nd, dg + group);
      for (int64_t a0 = a1; a0 < a1e; a0 += B) {
        const int64_t aa = std::min(a0, na - B);
        for (int64_t d0 = dg; d0 < dge; d0 += B) {
          const int64_t dd = std::min(d0, nd - B);
          block(src + dd * ssd + aa * es, ssd, dst + aa * dsa + dd * ed, dsa);
        }
      }
    }
  }
}

}  // namespace
}  // namespace mpslayout
