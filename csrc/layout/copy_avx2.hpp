// AVX2 copy loops of the staged kernels and of in-order copies: streamed (non-temporal,
// prefetching the next panel's source), plain, and the in-order copy loop. Include it after
// kernels_avx2.cpp's target pragma, like kernels_macro.hpp: it is compiled for AVX2 only.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace mpslayout {
namespace {

// Copies n < 64 bytes (a partial line) with two overlapping loads and stores of the
// largest width that fits, inline: a row's two partial lines went through two libc memcpy
// calls of variable length, ~15 cycles each, on every 400-byte row the DCGAN scatter moves.
inline void line_piece(char* d, const char* s, int64_t n) {
  if (n >= 32) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + n - 32));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + n - 32), b);
  } else if (n >= 16) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + n - 16));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d), a);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + n - 16), b);
  } else if (n >= 8) {
    uint64_t a, b;
    std::memcpy(&a, s, 8);
    std::memcpy(&b, s + n - 8, 8);
    std::memcpy(d, &a, 8);
    std::memcpy(d + n - 8, &b, 8);
  } else if (n >= 4) {
    uint32_t a, b;
    std::memcpy(&a, s, 4);
    std::memcpy(&b, s + n - 4, 4);
    std::memcpy(d, &a, 4);
    std::memcpy(d + n - 4, &b, 4);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
  }
}

// Copies n bytes with non-temporal stores for the whole cache lines inside the range and
// ordinary stores for the partial lines at its ends (a line never takes both kinds).
// With `ahead`, the lines of [ahead, ahead + n * ES / ED) are prefetched as the n bytes are
// written (ES <= ED: one prefetch per line written covers them): the next panel's source
// (ES-byte elements, written as ED-byte ones) arrives while this one leaves. A hint, never
// read: any address will do.
template <int64_t ES = 1, int64_t ED = 1>
inline void stream_copy(char* d, const char* s, int64_t n, const char* ahead = nullptr) {
  const int64_t head = std::min<int64_t>(n, (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63);
  line_piece(d, s, head);
  int64_t i = head;
  for (; i + 64 <= n; i += 64) {
    if (ahead) _mm_prefetch(ahead + i * ES / ED, _MM_HINT_T0);
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), lo);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32), hi);
  }
  line_piece(d + i, s + i, n - i);
}

// Copies n bytes with plain 32-byte stores (glibc's memcpy takes `rep movsb` from ~2 KiB,
// slow on the AMD parts measured when the destination is not 64-byte aligned).
inline void plain_copy(char* d, const char* s, int64_t n) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i + 32), hi);
  }
  std::memcpy(d + i, s + i, static_cast<size_t>(n - i));
}

// The in-order copy (kCopyLoop): 128 bytes per step, 32-byte aligned stores after one
// unaligned head store, the tail as one unaligned store ending at the last byte. glibc's
// memcpy takes `rep movsb` from ~2 KiB, which loses to this on cold data with a destination
// not 64-byte aligned (numpy's allocations are 16 bytes past a line).
inline void copy_bytes(char* d, const char* s, int64_t n) {
  if (n < 64) return (void)std::memcpy(d, s, static_cast<size_t>(n));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  int64_t i = 32 - static_cast<int64_t>(reinterpret_cast<uintptr_t>(d) & 31);
  for (; i + 128 <= n; i += 128) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 32));
    const __m256i v2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 64));
    const __m256i v3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 96));
    _mm256_store_si256(reinterpret_cast<__m256i*>(d + i), v0);
    _mm256_store_si256(reinterpret_cast<__m256i*>(d + i + 32), v1);
    _mm256_store_si256(reinterpret_cast<__m256i*>(d + i + 64), v2);
    _mm256_store_si256(reinterpret_cast<__m256i*>(d + i + 96), v3);
  }
  for (; i + 32 <= n; i += 32)
    _mm256_store_si256(reinterpret_cast<__m256i*>(d + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
  if (i < n)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + n - 32), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + n - 32)));
}
template <int E> MPSL_HOT void copy_row(const char* src, char* dst, int64_t n) { copy_bytes(dst, src, n * E); }
template <int E> void stream_row(const char* src, char* dst, int64_t n) { stream_copy(dst, src, n * E); }

}  // namespace
}  // namespace mpslayout
