// Iteration boxes: extents with byte strides on both sides, overflow-checked sizes, and the
// canonical form the planner works on (unit axes dropped, destination order, adjacent axes
// merged).
#pragma once

#include "hot.hpp"
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
inline Range touched(const Dim* dims, int n, bool source, int64_t e) {
  int64_t lo = 0, hi = 0;
  for (int i = 0; i < n; ++i) {
    const Dim& d = dims[i];
    if (d.n == 0) return {0, 0};
    const int64_t span = checked_mul(d.n - 1, source ? d.ss : d.ds);
    if (span < 0) lo = checked_add(lo, span); else hi = checked_add(hi, span);
  }
  return {lo, checked_add(hi, e)};
}
inline Range touched(const std::vector<Dim>& dims, bool source, int64_t e) {
  return touched(dims.data(), static_cast<int>(dims.size()), source, e);
}

// Most axes a box may have (the bindings refuse more): plans keep their axes in fixed
// arrays of this size, on the stack, so a call allocates nothing.
constexpr int kMaxAxes = 64;

// Drops unit axes, flips axes the destination walks backwards (so every destination stride
// is >= 0; the pointers move to the other end), orders axes by decreasing destination
// stride, and merges neighbours that are one axis on both sides. Works in place on
// dims[0, n) (n updated) and adjusts the pointers. Returns false if the box is empty.
MPSL_HOT inline bool canonicalize(Dim* dims, int& n, const char*& src, char*& dst) {
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    Dim d = dims[i];
    if (d.n == 0) return false;
    if (d.n == 1) continue;
    if (d.ds < 0) {
      src += (d.n - 1) * d.ss;
      dst += (d.n - 1) * d.ds;
      d.ss = -d.ss;
      d.ds = -d.ds;
    }
    // stable insertion: decreasing destination stride, then decreasing |source stride|
    const int64_t as = d.ss < 0 ? -d.ss : d.ss;
    int j = kept++;
    for (; j > 0; --j) {
      const Dim& p = dims[j - 1];
      const int64_t ps = p.ss < 0 ? -p.ss : p.ss;
      if (p.ds > d.ds || (p.ds == d.ds && ps >= as)) break;
      dims[j] = p;
    }
    dims[j] = d;
  }
  int out = 0;
  for (int i = 0; i < kept; ++i) {
    const Dim d = dims[i];
    if (out > 0) {
      Dim& o = dims[out - 1];
      if (o.ss == d.ss * d.n && o.ds == d.ds * d.n) {
        o.n *= d.n;
        o.ss = d.ss;
        o.ds = d.ds;
        continue;
      }
    }
    dims[out++] = d;
  }
  n = out;
  return true;
}

inline bool canonicalize(std::vector<Dim>& dims, const char*& src, char*& dst) {
  int n = static_cast<int>(dims.size());
  const bool nonempty = canonicalize(dims.data(), n, src, dst);
  dims.resize(static_cast<size_t>(nonempty ? n : 0));
  return nonempty;
}

}  // namespace mpslayout
