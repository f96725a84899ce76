#pragma once
// NST_HD marks a function that both the CPU kernels and the CUDA kernels run.
#if defined(__CUDACC__)
#define NST_HD __host__ __device__
#else
#define NST_HD
#endif
