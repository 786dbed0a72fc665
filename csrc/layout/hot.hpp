// MPSL_HOT: the functions of a small call's path, grouped by the compiler into one hot
// text section, so that a cold call (code from memory, the TLB cold too) touches a few
// pages of code instead of a dozen spread over the module.
#pragma once
#if defined(__GNUC__) || defined(__clang__)
#define MPSL_HOT __attribute__((hot))
#else
#define MPSL_HOT
#endif
