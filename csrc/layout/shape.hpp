// Iteration boxes: extents with byte strides on both sides, overflow-checked sizes, and the
// canonical form the planner works on (unit axes dropped, destination order, adjacent axes
// merged).
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace mpslayout {

struct Dim {
  int64_t n;   // extent
  int64_t ss;  // source stride, bytes
  int64_t ds;  // destination stride, bytes
};

#if defined(_MSC_VER) && !defined(__clang__)
// MSVC has no overflow builtins: check against the limits first.
inline int64_t checked_mul(int64_t a, int64_t b) {
  constexpr int64_t hi = INT64_MAX, lo = INT64_MIN;
  const bool over = a > 0 ? (b > 0 ? a > hi / b : b < lo / a) : (b > 0 ? a < lo / b : a != 0 && b < hi / a);
  if (over) throw std::overflow_error("size overflows 64 bits");
  return a * b;
}
inline int64_t checked_add(int64_t a, int64_t b) {
  if (b > 0 ? a > INT64_MAX - b : a < INT64_MIN - b) throw std::overflow_error("size overflows 64 bits");
  return a + b;
}
#else
inline int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) throw std::overflow_error("size overflows 64 bits");
  return r;
}
inline int64_t checked_add(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) throw std::overflow_error("size overflows 64 bits");
  return r;
}
#endif

inline int64_t count_of(const std::vector<Dim>& dims) {
  int64_t c = 1;
  for (const Dim& d : dims) c = checked_mul(c, d.n);
  return c;
}

// Byte range [lo, hi) touched relative to a base pointer by a box, for elements of size e.
struct Range {
  int64_t lo, hi;
};
inline Range touched(const std::vector<Dim>& dims, bool source, int64_t e) {
  int64_t lo = 0, hi = 0;
  for (const Dim& d : dims) {
    if (d.n == 0) return {0, 0};
    const int64_t span = checked_mul(d.n - 1, source ? d.ss : d.ds);
    if (span < 0) lo = checked_add(lo, span); else hi = checked_add(hi, span);
  }
  return {lo, checked_add(hi, e)};
}

// Drops unit axes, flips axes the destination walks backwards (so every destination stride
// is >= 0; the pointers move to the other end), orders axes by decreasing destination
// stride, and merges neighbours that are one axis on both sides. Pointers are adjusted in
// place. Returns false if the box is empty.
inline bool canonicalize(std::vector<Dim>& dims, const char*& src, char*& dst) {
  std::vector<Dim> kept;
  kept.reserve(dims.size());
  for (Dim d : dims) {
    if (d.n == 0) return false;
    if (d.n == 1) continue;
    if (d.ds < 0) {
      src += (d.n - 1) * d.ss;
      dst += (d.n - 1) * d.ds;
      d.ss = -d.ss;
      d.ds = -d.ds;
    }
    kept.push_back(d);
  }
  std::stable_sort(kept.begin(), kept.end(), [](const Dim& a, const Dim& b) {
    if (a.ds != b.ds) return a.ds > b.ds;
    const int64_t as = a.ss < 0 ? -a.ss : a.ss, bs = b.ss < 0 ? -b.ss : b.ss;
    return as > bs;
  });
  dims.clear();
  for (const Dim& d : kept) {
    if (!dims.empty()) {
      Dim& o = dims.back();
      if (o.ss == d.ss * d.n && o.ds == d.ds * d.n) {
        o.n *= d.n;
        o.ss = d.ss;
        o.ds = d.ds;
        continue;
      }
    }
    dims.push_back(d);
  }
  return true;
}

}  // namespace mpslayout
