// The launch plan of the nst_fast style-loss kernels, which the host side
// (style_loss_cuda.cu) and the CPU emulator (tests/cuda_emulator) share: the features'
// layout and alignment, the forward's split-K grid, the backward's output layout and
// grid, shared memory, and the kernel instantiation for a layout, pipeline and precision.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "style_loss_backward.cuh"  // resident_smem_bytes, style_bwd_resident_kernel
#include "style_loss_pipeline.cuh"

namespace nst_fast {
namespace kernels {

// ---------------------------------------------------------------- launch planning
constexpr int SMEM_SYNC_BYTES = 2 * 2 * SMEM_TILE * (int)sizeof(float);
constexpr int SMEM_ASYNC_BYTES = NSTAGE * 2 * SMEM_TILE * (int)sizeof(float);

// Features (B, C, M) seen as one row-major matrix per batch item.
struct FeatureLayout {
  bool dense;        // false: neither M nor C has unit stride (the caller copies)
  bool cl;           // channels-last: rows = M, cols = C
  long long sb, ld;  // batch stride, row stride (elements)
};

inline FeatureLayout feature_layout(long long s0, long long s1, long long s2) {
  if (s2 == 1) return {true, false, s0, s1};
  if (s1 == 1) return {true, true, s0, s2};
  return {false, false, 0, 0};
}

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Every row of B matrices (row stride ld, batch stride sb, cols elements of elem bytes
// each) starts n-element aligned and holds whole groups of n.
inline bool rows_in_groups(const void* p, size_t elem, long long n, long long sb, long long ld, long long cols,
                           long long B) {
  return aligned(p, n * elem) && ld % n == 0 && (B == 1 || sb % n == 0) && cols % n == 0;
}

// 4-element vector loads of the register-staged path are legal.
inline bool vec_ok(const void* p, size_t elem, long long sb, long long ld, long long cols, long long B) {
  return rows_in_groups(p, elem, 4, sb, ld, cols, B);
}

// The cp.async pipeline copies 16 bytes at a time: the base, the row and batch
// strides and the row length must all be multiples of 16 bytes.
inline bool async_layout_ok(const void* p, size_t elem, long long sb, long long ld, long long cols, long long B) {
  return rows_in_groups(p, elem, 16 / (long long)elem, sb, ld, cols, B);
}

// Forward grid: upper-triangle tiles x splits of M x batch.
struct GramPlan {
  int ntile;          // channel tiles per side
  long long tiles;    // upper-triangle tiles
  long long splits;   // slices of M
  long long chunk;    // columns of M per slice (a multiple of BK)
};

inline GramPlan plan_gram(long long B, long long C, long long M, long long target_blocks) {
  GramPlan p;
  p.ntile = (int)((C + TILE - 1) / TILE);
  p.tiles = (long long)p.ntile * (p.ntile + 1) / 2;
  long long S = (target_blocks + B * p.tiles - 1) / (B * p.tiles);
  if (S < 1) S = 1;
  long long chunk = (M + S - 1) / S;
  chunk = (chunk + BK - 1) / BK * BK;
  if (chunk < 2 * BK) chunk = 2 * BK;
  p.chunk = chunk;
  p.splits = (M + chunk - 1) / chunk;
  if (p.splits < 1) p.splits = 1;
  return p;
}

// Backward output in the kernel's tile orientation: (i, m) standard, (m, i) channels-last.
struct BackwardOut {
  long long sb, row, col;  // element strides of batch, tile row, tile column
  int vec;                 // neighbours along a tile row stored together: 1, 2, or 8 (16 bytes of 2-byte values)
};

// add and relu: ReluGrad's buffers (null: absent), read at out's offsets, so vec is as
// wide as all three allow.
inline BackwardOut backward_out(const void* out, const void* add, const void* relu, size_t elem, long long s0,
                                long long s1, long long s2, bool cl, long long C, long long M, long long B) {
  BackwardOut o{s0, cl ? s2 : s1, cl ? s1 : s2, 1};
  const long long cols = cl ? C : M;
  auto all_in_groups = [&](long long n) {
    for (const void* p : {out, add, relu})
      if (p != nullptr && !rows_in_groups(p, elem, n, o.sb, o.row, cols, B)) return false;
    return true;
  };
  if (o.col == 1 && elem == 2 && all_in_groups(8))
    o.vec = 8;
  else if (o.col == 1 && all_in_groups(2))
    o.vec = 2;
  return o;
}

// The widest D panel the D-resident backward takes, from the NST_FAST_CUDA_RESIDENT
// setting: 0 turns it off; 256 adds the 256-column panel (C <= 256: relu3_1), which
// leaves 2 blocks per SM, an experiment for the device's A/B; anything else gives the
// default, C <= 128.
inline int resident_limit(long long setting) {
  return setting == 0 ? 0 : setting == 256 ? 256 : 128;
}

// Backward grid per batch item, for features of type T. The D-resident kernel where it
// applies (the cp.async path, C <= limit): one wave of blocks, each walking several m
// tiles of one channel tile; as many blocks per SM as the panel's shared memory allows
// (4 with the 64-column panel's 53-54 KB, 3 with the 128-column one's 69-70 KB, 2 with
// the 256-column one's 102-103 KB). Else one block per output tile.
struct BackwardPlan {
  bool resident;
  int panel;          // resident: the D panel's column capacity (64, 128 or 256)
  long long blocks;   // grid.x
  int smem_bytes;     // dynamic shared memory
};

template <typename T>
BackwardPlan plan_backward(long long B, long long C, long long M, bool async, int limit, long long sms) {
  const long long n_i = (C + TILE - 1) / TILE, n_m = (M + TILE - 1) / TILE;
  if (!async || C > limit) {
    return {false, 0, n_i * n_m, async ? SMEM_ASYNC_BYTES : SMEM_SYNC_BYTES};
  }
  const int panel = C <= 64 ? 64 : C <= 128 ? 128 : 256;
  long long groups = (panel == 64 ? 4 : panel == 128 ? 3 : 2) * sms / (B * n_i);
  if (groups < 1) groups = 1;
  if (groups > n_m) groups = n_m;
  return {true, panel, groups * n_i, resident_smem_bytes<T>(panel)};
}

// Calls launch(kernel, async) with the instantiation for the layout (channels-last or
// not), the pipeline (cp.async or register-staged) and the precision: float32 features
// take TF32 products where tf32 is set. pick(cl, async, tf32) names the kernel, given
// std::true_type / std::false_type.
template <typename T, typename Pick, typename Launch>
void with_kernel(Pick pick, bool cl, bool async, bool tf32, Launch&& launch) {
  using Yes = std::true_type;
  using No = std::false_type;
  auto by_precision = [&](auto layout, auto pipeline) {
    if constexpr (std::is_same<T, float>::value) {
      if (tf32) {
        launch(pick(layout, pipeline, Yes{}), decltype(pipeline)::value);
        return;
      }
    }
    launch(pick(layout, pipeline, No{}), decltype(pipeline)::value);
  };
  auto by_pipeline = [&](auto layout) {
    if (async)
      by_precision(layout, Yes{});
    else
      by_precision(layout, No{});
  };
  if (cl)
    by_pipeline(Yes{});
  else
    by_pipeline(No{});
}

// Calls launch(kernel) with the D-resident backward for the layout, panel and precision.
template <typename T, typename Launch>
void with_resident_kernel(bool cl, bool tf32, int panel, Launch&& launch) {
  auto go = [&](auto layout, auto cp) {
    constexpr bool CL = decltype(layout)::value;
    constexpr int CP = decltype(cp)::value;
    if constexpr (std::is_same<T, float>::value) {
      if (tf32) {
        launch(style_bwd_resident_kernel<T, CL, true, CP>);
        return;
      }
    }
    launch(style_bwd_resident_kernel<T, CL, false, CP>);
  };
  using P64 = std::integral_constant<int, 64>;
  using P128 = std::integral_constant<int, 128>;
  using P256 = std::integral_constant<int, 256>;
  auto by_panel = [&](auto layout) {
    if (panel == 64)
      go(layout, P64{});
    else if (panel == 128)
      go(layout, P128{});
    else
      go(layout, P256{});
  };
  if (cl)
    by_panel(std::true_type{});
  else
    by_panel(std::false_type{});
}

}  // namespace kernels
}  // namespace nst_fast
