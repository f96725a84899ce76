// A CPU emulator of the CUDA features the nst_fast style-loss kernels use, so that
// their indexing, pipelining and split-K bookkeeping run on machines without a GPU.
//
// Every CUDA thread is a ucontext fiber; a block's fibers take turns on one OS thread
// and switch only at __syncthreads and at warp-wide operations (mma.sync, shuffles).
// Blocks run one after another in a shuffled order, and a block's threads resume in a
// new shuffled order every round. Semantics kept strict where a kernel bug could hide:
//   * cp.async copies land at the cp.async.wait_group that guarantees them, not
//     before, so a stage read too early holds stale data;
//   * shared memory starts as NaN bytes in every block;
//   * mma.sync follows the PTX fragment layouts of m16n8k8 (tf32) and m16n8k16 (bf16,
//     fp16), and reads only the 19 bits of a tf32 operand (the tensor cores drop the rest);
//     ldmatrix (x4, plain and .trans) follows the PTX ISA's thread-to-row mapping and
//     fails on rows outside shared memory, not 16-byte aligned, or in bank conflict;
//   * a barrier that can never complete (divergent __syncthreads) aborts.
// Not modelled: timing, concurrent blocks (the kernels' atomics are order-independent,
// and the shuffled block order exercises the split-K arrival). Built with
// -DNST_EMU_PROFILE -fsanitize=thread, it also profiles every shared and global access
// (access_profile.h): bank conflicts and sectors per warp instruction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <vector>

namespace emu {

constexpr int kWarp = 32;

// Exits at once: it may be called on a fiber's stack, where running destructors is unsafe.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emulator: %s\n", what);
  std::fflush(nullptr);
  std::_Exit(3);
}

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};

struct Copy {
  void* dst;
  const void* src;
  int bytes;  // copied; the rest of the 16 is zero-filled
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;  // allocated once per launch, not cleared
  Dim tid;
  bool done = false;
  long epoch = 0;  // barriers and warp-wide operations passed: groups a warp's accesses
  std::vector<std::vector<Copy>> committed;  // oldest first
  std::vector<Copy> open;
};

// Operands of one warp-wide operation; two slots so that a lane may post the next
// operation while slower lanes still read the current one.
struct WarpSlots {
  uint32_t a[kWarp][4];
  uint32_t b[kWarp][2];
  double value[kWarp];
  const unsigned char* row[kWarp];
};

struct Warp {
  long gen = 0;
  int arrived = 0;
  int live = 0;
  WarpSlots slot[2];
};

struct Runtime {
  Dim grid, block;
  std::vector<Fiber> fibers;
  int current = -1;
  ucontext_t scheduler;
  long bar_gen = 0;
  int bar_arrived = 0;
  int live = 0;
  long events = 0;  // arrivals, releases and exits: progress
  std::vector<Warp> warps;
  std::vector<long> lane_ops;  // per thread: its warp-wide operations so far
  std::vector<unsigned char> smem;
  std::function<void()> body;
};

inline Runtime& rt() {
  static Runtime r;
  return r;
}
inline Fiber& self() { return rt().fibers[rt().current]; }
inline int lane_of(int t) { return t % kWarp; }

inline float* dynamic_smem() { return reinterpret_cast<float*>(rt().smem.data()); }

inline void yield() { swapcontext(&self().ctx, &rt().scheduler); }

}  // namespace emu

#ifdef NST_EMU_PROFILE
#include "access_profile.h"
#define NST_EMU_NOINLINE __attribute__((noinline))
#else
namespace emu::profile {
inline void block_end() {}
}  // namespace emu::profile
#define NST_EMU_NOINLINE
#endif

namespace emu {

inline void release_block_barrier_if_full() {
  Runtime& r = rt();
  if (r.bar_arrived > 0 && r.bar_arrived == r.live) {
    r.bar_arrived = 0;
    ++r.bar_gen;
    ++r.events;
  }
}

inline void release_warp_if_full(Warp& w) {
  if (w.arrived > 0 && w.arrived == w.live) {
    w.arrived = 0;
    ++w.gen;
    ++rt().events;
  }
}

inline void syncthreads() {
  Runtime& r = rt();
  const long gen = r.bar_gen;
  ++r.bar_arrived;
  ++r.events;
  release_block_barrier_if_full();
  while (r.bar_gen == gen) yield();
  ++self().epoch;
}

inline void warp_sync() {
  Runtime& r = rt();
  Warp& w = r.warps[r.current / kWarp];
  const long gen = w.gen;
  ++w.arrived;
  ++r.events;
  release_warp_if_full(w);
  while (w.gen == gen) yield();
  ++self().epoch;
}

// The slot this lane's next warp-wide operation uses.
inline WarpSlots& next_slot() {
  Runtime& r = rt();
  return r.warps[r.current / kWarp].slot[r.lane_ops[r.current] & 1];
}
inline void finish_warp_op() { ++rt().lane_ops[rt().current]; }

inline void fiber_main() {
  Runtime& r = rt();
  r.body();
  Fiber& f = self();
  if (!f.open.empty() || !f.committed.empty()) fail("thread exited with cp.async copies pending");
  f.done = true;
  --r.live;
  Warp& w = r.warps[r.current / kWarp];
  --w.live;
  ++r.events;
  release_block_barrier_if_full();
  release_warp_if_full(w);
}

// Runs body() as every thread of every block of the grid.
inline void launch(Dim grid, int threads, size_t smem_bytes, std::function<void()> body, unsigned seed) {
  Runtime& r = rt();
  r.grid = grid;
  r.body = std::move(body);
  std::vector<Dim> blocks;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
  std::mt19937 rng(seed);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  constexpr size_t kStack = 256 * 1024;
  r.fibers = std::vector<Fiber>(threads);
  for (Fiber& f : r.fibers) f.stack.reset(new char[kStack]);
  for (const Dim& b : blocks) {
    r.block = b;
    r.smem = std::vector<unsigned char>(smem_bytes, 0xFF);  // exact size; NaN floats and halves
    r.warps.assign((threads + kWarp - 1) / kWarp, Warp());
    r.lane_ops.assign(threads, 0);
    for (int t = 0; t < threads; ++t) r.warps[t / kWarp].live++;
    r.live = threads;
    r.bar_arrived = 0;
    for (int t = 0; t < threads; ++t) {
      Fiber& f = r.fibers[t];
      f.tid = {(unsigned)t, 0, 0};
      f.done = false;
      f.epoch = 0;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = &r.scheduler;
      makecontext(&f.ctx, fiber_main, 0);
    }
    std::vector<int> order(threads);
    for (int t = 0; t < threads; ++t) order[t] = t;
    while (r.live > 0) {
      const long before = r.events;
      std::shuffle(order.begin(), order.end(), rng);  // a new interleaving every round
      for (int t : order) {
        if (r.fibers[t].done) continue;
        r.current = t;
        swapcontext(&r.scheduler, &r.fibers[t].ctx);
      }
      if (r.live > 0 && r.events == before) fail("deadlock: a barrier that not every thread reaches");
    }
    r.current = -1;
    profile::block_end();
  }
}

}  // namespace emu

#ifdef NST_EMU_PROFILE
namespace emu::profile {

// Every load and store of the translation unit, and the emulated cp.async and ldmatrix.
__attribute__((no_sanitize_thread)) inline void on_access(uintptr_t site, const void* p, int bytes, bool write) {
  if (busy) return;
  busy = true;
  const Runtime& r = rt();
  State& s = state();
  if (r.current >= 0 && s.quiet == 0) {
    const auto* a = static_cast<const unsigned char*>(p);
    const long epoch = r.fibers[r.current].epoch;
    if (a >= r.smem.data() && a < r.smem.data() + r.smem.size()) {
      record(site, r.current, epoch, p, bytes, write, kShared, 0);
    } else {
      for (size_t i = 0; i < s.globals.size(); ++i)
        if (a >= s.globals[i].lo && a < s.globals[i].lo + s.globals[i].bytes) {
          record(site, r.current, epoch, p, bytes, write, kGlobal, (int)i);
          break;
        }
    }
  }
  busy = false;
}

}  // namespace emu::profile

#define NST_EMU_SITE reinterpret_cast<uintptr_t>(__builtin_return_address(0))
#define NST_EMU_HOOK(n)                                                                                      \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_read##n(void* p) {                              \
    emu::profile::on_access(NST_EMU_SITE, p, n, false);                                                      \
  }                                                                                                          \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_write##n(void* p) {                             \
    emu::profile::on_access(NST_EMU_SITE, p, n, true);                                                       \
  }                                                                                                          \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_unaligned_read##n(void* p) {                    \
    emu::profile::on_access(NST_EMU_SITE, p, n, false);                                                      \
  }                                                                                                          \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_unaligned_write##n(void* p) {                   \
    emu::profile::on_access(NST_EMU_SITE, p, n, true);                                                       \
  }
NST_EMU_HOOK(1)
NST_EMU_HOOK(2)
NST_EMU_HOOK(4)
NST_EMU_HOOK(8)
NST_EMU_HOOK(16)
extern "C" __attribute__((no_sanitize_thread)) void __tsan_read_range(void* p, unsigned long n) {
  emu::profile::on_access(NST_EMU_SITE, p, (int)n, false);
}
extern "C" __attribute__((no_sanitize_thread)) void __tsan_write_range(void* p, unsigned long n) {
  emu::profile::on_access(NST_EMU_SITE, p, (int)n, true);
}
extern "C" __attribute__((no_sanitize_thread)) unsigned char __tsan_atomic8_load(const volatile unsigned char* a,
                                                                                 int) {
  return *a;
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
// Virtual-table pointer stores in the constructors of the harness's file streams.
extern "C" void __tsan_vptr_update(void**, void*) {}
extern "C" void __tsan_vptr_read(void**) {}
#else
#define NST_EMU_SITE 0
#endif

// ---------------------------------------------------------------- CUDA names
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#ifdef NST_EMU_PROFILE
#define __forceinline__ inline __attribute__((always_inline))  // sites in the caller, as nvcc inlines
#else
#define __forceinline__ inline
#endif
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static  // one block at a time: a static is the block's shared variable

#define threadIdx (::emu::self().tid)
#define blockIdx (::emu::rt().block)
#define gridDim (::emu::rt().grid)

inline void __syncthreads() { emu::syncthreads(); }
inline void __threadfence() {}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int offset) {
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: only full-warp masks are emulated");
  const int lane = emu::lane_of(emu::rt().current);
  emu::WarpSlots& s = emu::next_slot();
  s.value[lane] = (double)v;
  emu::warp_sync();
  const T out = (T)s.value[lane ^ offset];
  emu::finish_warp_op();
  return out;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline float __ldcg(const float* p) { return *p; }
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p += v;
  return old;
}
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p += v;
  return old;
}
inline float2 atomicAdd(float2* p, float2 v) {  // sm_90's vector atomic
  const float2 old = *p;
  *p = make_float2(old.x + v.x, old.y + v.y);
  return old;
}

// ---------------------------------------------------------------- the PTX wrappers
#define NST_FAST_PTX_PROVIDED
#define NST_DYNAMIC_SMEM(name) float* name = ::emu::dynamic_smem()
#define NST_FAST_PAIR_ATOMICS 1  // the sm_90 build's

namespace nst_fast {
namespace kernels {

// cvt.rna.tf32.f32: to nearest, ties away from zero, on the magnitude.
inline uint32_t to_tf32(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return u & 0xffffe000u;  // inf / nan
  return (u + 0x1000u) & 0xffffe000u;
}

// The warp-wide part of an mma.sync.m16n8kK: every lane posts its fragments; then each
// computes its four outputs c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)
// from A(slots, row, k) and B(slots, k, col), exact products summed in double.
template <int K, typename ElemA, typename ElemB>
void warp_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], ElemA A, ElemB B) {
  const int lane = emu::lane_of(emu::rt().current);
  emu::WarpSlots& s = emu::next_slot();
#ifdef NST_EMU_PROFILE
  ++emu::profile::state().mma_lanes;
#endif
  for (int q = 0; q < 4; ++q) s.a[lane][q] = a[q];
  for (int q = 0; q < 2; ++q) s.b[lane][q] = b[q];
  emu::warp_sync();
  const int g = lane >> 2, t = lane & 3;
  for (int q = 0; q < 4; ++q) {
    const int row = g + 8 * (q >> 1), col = 2 * t + (q & 1);
    double sum = 0.0;
    for (int k = 0; k < K; ++k) sum += A(s, row, k) * B(s, k, col);
    d[q] = (float)((double)d[q] + sum);
  }
  emu::finish_warp_op();
}

// mma.sync.m16n8k8.row.col.f32.tf32.tf32.f32, lane = 4 * g + t: a0 (g, t), a1 (g + 8, t),
// a2 (g, t + 4), a3 (g + 8, t + 4); b0 (k = t, n = g), b1 (t + 4, g).
inline void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto tf32 = [](uint32_t u) { return (double)__uint_as_float(u & 0xffffe000u); };
  warp_mma<8>(
      d, a, b,
      [&](const emu::WarpSlots& s, int row, int k) {
        return tf32(s.a[4 * (row % 8) + k % 4][(row >= 8) + 2 * (k >= 4)]);
      },
      [&](const emu::WarpSlots& s, int k, int n) { return tf32(s.b[4 * n + k % 4][k >= 4]); });
}

// mma.sync.m16n8k16.row.col.f32.{bf16,f16}: two values per register, the lower index in
// the low half. a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..);
// b0 (k = 2t..2t+1, n = g), b1 (k = 2t + 8.., g).
template <bool BF16>
void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto value = [](uint32_t reg, int half) -> double {
    const unsigned short h = (unsigned short)(reg >> (16 * half));
    if (BF16) return (double)__uint_as_float((uint32_t)h << 16);
    __half_raw raw;
    raw.x = h;
    return (double)__half2float(__half(raw));
  };
  warp_mma<16>(
      d, a, b,
      [&](const emu::WarpSlots& s, int row, int k) {
        return value(s.a[4 * (row % 8) + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
      },
      [&](const emu::WarpSlots& s, int k, int n) { return value(s.b[4 * n + (k % 8) / 2][k >= 8], k % 2); });
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16.
template <bool TRANS>
NST_EMU_NOINLINE void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef NST_EMU_PROFILE
  emu::profile::on_access(NST_EMU_SITE, row, 16, false);
#endif
  emu::Runtime& rt = emu::rt();
  const int lane = emu::lane_of(rt.current);
  const auto* p = static_cast<const unsigned char*>(row);
  if (p < rt.smem.data() || p + 16 > rt.smem.data() + rt.smem.size()) emu::fail("ldmatrix outside shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) emu::fail("ldmatrix: row address not 16-byte aligned");
  emu::WarpSlots& s = emu::next_slot();
  s.row[lane] = p;
  emu::warp_sync();
#ifdef NST_EMU_PROFILE
  emu::profile::Quiet quiet;  // the row reads below are this instruction's, recorded above (no yield follows)
#endif
  if (lane == 0) {
    // Shared memory serves 128 bytes a cycle: a matrix whose 8 rows do not fall in 8
    // distinct 16-byte bank groups takes more than one.
    for (int j = 0; j < 4; ++j) {
      unsigned groups = 0;
      for (int i = 0; i < 8; ++i) groups |= 1u << ((s.row[8 * j + i] - rt.smem.data()) / 16 % 8);
      if (groups != 0xffu) emu::fail("ldmatrix: bank conflict (two rows of a matrix in one 16-byte bank group)");
    }
  }
  auto half = [&](int matrix, int r, int c) {  // 16-bit element c of row r
    unsigned short h;
    std::memcpy(&h, s.row[8 * matrix + r] + 2 * c, 2);
    return (uint32_t)h;
  };
  const int g = lane >> 2, t = lane & 3;
  for (int j = 0; j < 4; ++j) {
    if (TRANS)
      r[j] = half(j, 2 * t, g) | (half(j, 2 * t + 1, g) << 16);
    else
      r[j] = half(j, g, 2 * t) | (half(j, g, 2 * t + 1) << 16);
  }
  emu::finish_warp_op();
}

NST_EMU_NOINLINE inline void cp_async16(void* smem_dst, const void* gsrc, bool pred) {
#ifdef NST_EMU_PROFILE
  if (pred) emu::profile::on_access(NST_EMU_SITE, gsrc, 16, false);
  emu::profile::on_access(NST_EMU_SITE, smem_dst, 16, true);
#endif
  emu::Runtime& r = emu::rt();
  const auto* dst = static_cast<unsigned char*>(smem_dst);
  if (dst < r.smem.data() || dst + 16 > r.smem.data() + r.smem.size()) emu::fail("cp.async outside shared memory");
  if (reinterpret_cast<uintptr_t>(smem_dst) % 16 != 0) emu::fail("cp.async: shared address not 16-byte aligned");
  if (pred && reinterpret_cast<uintptr_t>(gsrc) % 16 != 0) emu::fail("cp.async: global address not 16-byte aligned");
  emu::self().open.push_back({smem_dst, gsrc, pred ? 16 : 0});
}

inline void cp_async_commit() {
  emu::Fiber& f = emu::self();
  f.committed.push_back(std::move(f.open));
  f.open.clear();
}

template <int N>
void cp_async_wait() {
  emu::Fiber& f = emu::self();
  while (f.committed.size() > (size_t)N) {
    for (const emu::Copy& c : f.committed.front()) {
      std::memcpy(c.dst, c.src, c.bytes);
      std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
    }
    f.committed.erase(f.committed.begin());
  }
}

}  // namespace kernels
}  // namespace nst_fast
