// The micro/macro-kernel table: one entry per element operation (plain copy by element
// size, or a fused cast), filled once at run time with the best instruction set present.
#pragma once
#include <cstdint>
#include "cast.hpp"
#include "hot.hpp"

// The target architecture, from the compiler (not the build system), so that one source list
// serves single-arch builds and macOS universal2 alike: each SIMD file compiles to nothing
// for an architecture it does not serve.
#if defined(__x86_64__) || defined(_M_X64)
#define MPSLAYOUT_X86 1
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define MPSLAYOUT_NEON 1  // Advanced SIMD (with FCVTN/FCVTL) is baseline on AArch64
#endif

namespace mpslayout {

enum Op : int { kCopy1, kCopy2, kCopy4, kCopy8, kF32F16, kF16F32, kF64F32, kF32BF16, kBF16F32, kNumOps };

// Contiguous run of n elements.
using RowFn = void (*)(const char* src, char* dst, int64_t n);
// Transpose panel: element (a, d) is read at src + a*esrc + d*ssd (contiguous along a) and
// written at dst + a*dsa + d*edst (contiguous along d).
using TileFn = void (*)(const char* src, int64_t ssd, char* dst, int64_t dsa, int64_t na, int64_t nd);
// Any strides: element (a, d) at src + a*ssa + d*ssd, written at dst + a*dsa + d*dsd.
using StridedFn = void (*)(const char* src, int64_t ssa, int64_t ssd, char* dst, int64_t dsa,
                           int64_t dsd, int64_t na, int64_t nd);

struct KernelSet {
  const char* isa;
  RowFn row[kNumOps];
  TileFn tile[kNumOps];
  StridedFn strided[kNumOps];
  TileFn staged_tile[kNumOps];  // tile variant building each panel in a buffer, copied out
  TileFn stream_tile[kNumOps];  // the same leaving with non-temporal stores (the caller fences)
  RowFn copy_row[kNumOps];      // copies (kCopy1..8): the ISA's own copy loop; others: row
  RowFn stream_row[kNumOps];    // copies leaving with non-temporal stores (the caller fences); others: row
};

inline namespace MPSLAYOUT_ISA_NS {  // see cast.hpp
inline Op op_for(Cast cast, int elem_size) {
  switch (cast) {
    case Cast::F32toF16: return kF32F16;
    case Cast::F16toF32: return kF16F32;
    case Cast::F64toF32: return kF64F32;
    case Cast::F32toBF16: return kF32BF16;
    case Cast::BF16toF32: return kBF16F32;
    default: break;
  }
  switch (elem_size) {
    case 1: return kCopy1;
    case 2: return kCopy2;
    case 4: return kCopy4;
    default: return kCopy8;
  }
}
}  // inline namespace MPSLAYOUT_ISA_NS

// The active table (chosen on first use from cpuid, overridable by MPSLAYOUT_ISA).
const KernelSet& kernels();
// Names of the instruction sets this build and this CPU can run, best last.
const char* const* available_isas(int* count);
// Select by name ("scalar", "sse2", "avx2", "neon", or "auto"); returns false if unsupported.
bool select_isa(const char* name);  // not thread-safe: tests and tools only

void fill_scalar(KernelSet& ks);
#if defined(MPSLAYOUT_X86)
void fill_sse2(KernelSet& ks);
void fill_avx2(KernelSet& ks);
#endif
#if defined(MPSLAYOUT_NEON)
void fill_neon(KernelSet& ks);
#endif

}  // namespace mpslayout
