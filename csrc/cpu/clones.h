#pragma once
// Runtime CPU dispatch without building the whole extension for one instruction set:
// a function marked NST_FAST_CLONES is compiled for AVX-512, AVX2 and plain x86-64
// and the copy for the running CPU is picked at load time. The templates it calls are
// NST_FAST_INLINE, so each copy gets its own instruction set.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define NST_FAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NST_FAST_CLONES
#endif
#if defined(__GNUC__)
#define NST_FAST_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define NST_FAST_INLINE __forceinline
#else
#define NST_FAST_INLINE inline
#endif
