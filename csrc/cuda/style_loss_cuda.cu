// Host side of the nst_fast CUDA style-loss ops (see nst_fast/style_loss.h for the contract):
// checks, workspaces and launches. The kernels are in style_loss_forward.cuh and
// style_loss_backward.cuh, their grids and instantiations in style_loss_plan.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include "nst_fast/style_loss.h"
#include "style_loss_backward.cuh"
#include "style_loss_forward.cuh"
#include "style_loss_plan.cuh"

namespace nst_fast {
namespace {

using namespace kernels;

template <typename T>
struct CudaType { using type = T; };
template <>
struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };
template <>
struct CudaType<at::Half> { using type = __half; };

#define NST_DISPATCH_REDUCED(TYPE, NAME, ...)                                  \
  [&] {                                                                        \
    switch (TYPE) {                                                            \
      case at::kFloat: {                                                       \
        using scalar_t = float;                                                \
        return __VA_ARGS__();                                                  \
      }                                                                        \
      case at::kBFloat16: {                                                    \
        using scalar_t = at::BFloat16;                                         \
        return __VA_ARGS__();                                                  \
      }                                                                        \
      case at::kHalf: {                                                        \
        using scalar_t = at::Half;                                             \
        return __VA_ARGS__();                                                  \
      }                                                                        \
      default:                                                                 \
        fail_unsupported_dtype(NAME, TYPE);                                    \
    }                                                                          \
  }()

int splitk_blocks_per_sm() {
  const char* env = std::getenv("NST_FAST_SPLITK_PER_SM");
  if (env != nullptr) {
    int v = std::atoi(env);
    if (v > 0 && v <= 64) return v;
  }
  return 3;  // the fp32 gram kernel fits 3 blocks per SM (about 155 registers)
}

// NST_FAST_CUDA_ASYNC=0 turns the cp.async pipeline off (register-staged double
// buffering everywhere), for A/B timing on the device.
bool async_enabled() {
  const char* env = std::getenv("NST_FAST_CUDA_ASYNC");
  return env == nullptr || std::atoi(env) != 0;
}

// NST_FAST_CUDA_RESIDENT=0 turns the D-resident backward off (one block per output
// tile everywhere), =256 extends it to C <= 256 (resident_limit), for A/B timing on the device.
int resident_setting() {
  const char* env = std::getenv("NST_FAST_CUDA_RESIDENT");
  return resident_limit(env == nullptr ? 1 : std::atoi(env));
}

void ensure_smem(const void* fn, int bytes) {
  if (bytes <= 48 * 1024) return;
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mu);
  if (done.count({fn, dev})) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert({fn, dev});
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, cudaStream_t stream, int smem_bytes, Args... args) {
  ensure_smem((const void*)kernel, smem_bytes);
  kernel<<<grid, THREADS, smem_bytes, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int smem_bytes(bool async) { return async ? SMEM_ASYNC_BYTES : SMEM_SYNC_BYTES; }

// TF32 products for float32 features where the user allowed TF32 matmuls.
bool tf32_allowed() { return at::globalContext().allowTF32CuBLAS(); }

// Cached per device. ATen/cuda/CUDAContext.h would give it too, but pulls in the
// cuSPARSE/cuBLAS headers, which a bare CUDA toolkit may lack.
int multiprocessor_count() {
  static int counts[64] = {0};
  const int device = c10::cuda::current_device();
  int& count = counts[device % 64];
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  }
  return count;
}

// The features as the kernels read them: a copy where neither M nor C has unit stride.
struct KernelFeatures {
  at::Tensor f;
  FeatureLayout layout;
};

KernelFeatures features_for_kernel(const at::Tensor& features) {
  FeatureLayout layout = feature_layout(features.stride(0), features.stride(1), features.stride(2));
  if (layout.dense) return {features, layout};
  at::Tensor f = features.contiguous();
  return {f, feature_layout(f.stride(0), f.stride(1), f.stride(2))};
}

// G (target undefined) or D = G - A and loss = scale * sum(D^2) (target defined).
void launch_gram(const at::Tensor& features, const at::Tensor* target, at::Tensor& out,
                 at::Tensor* loss, double scale) {
  const KernelFeatures kf = features_for_kernel(features);
  const at::Tensor& f = kf.f;
  const FeatureLayout& fv = kf.layout;
  const int64_t B = features.size(0), C = features.size(1), M = features.size(2);
  const GramPlan plan = plan_gram(B, C, M, (int64_t)splitk_blocks_per_sm() * multiprocessor_count());
  const int64_t T_tiles = plan.tiles, S = plan.splits;
  TORCH_CHECK(S <= 65535 && T_tiles < (1LL << 31), "nst_fast: features too large");

  // One zeroed workspace: G accumulator, per-tile counters, done counter, tile losses.
  const int64_t n_g = B * C * C, n_t = B * T_tiles;
  auto ws = at::zeros({n_g + 2 * n_t + 1}, features.options().dtype(at::kFloat));
  float* gacc = ws.data_ptr<float>();
  int* tile_cnt = reinterpret_cast<int*>(gacc + n_g);
  int* done_cnt = tile_cnt + n_t;
  float* loss_part = reinterpret_cast<float*>(done_cnt + 1);

  const float* A = nullptr;
  long long sAb = 0, sA1 = 0, sA2 = 0;
  if (target != nullptr) {
    A = target->data_ptr<float>();
    sAb = target->stride(0);
    sA1 = target->stride(1);
    sA2 = target->stride(2);
  }
  float* loss_ptr = loss != nullptr ? loss->data_ptr<float>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dim3 grid((unsigned)T_tiles, (unsigned)S, (unsigned)B);

  NST_DISPATCH_REDUCED(features.scalar_type(), "gram", [&] {
    using cuda_t = typename CudaType<scalar_t>::type;
    const cuda_t* F = reinterpret_cast<const cuda_t*>(f.data_ptr<scalar_t>());
    const int64_t cols = fv.cl ? C : M;
    const bool vec = vec_ok(F, sizeof(cuda_t), fv.sb, fv.ld, cols, B);
    const bool use_async = async_enabled() && async_layout_ok(F, sizeof(cuda_t), fv.sb, fv.ld, cols, B);
    auto pick = [](auto cl, auto async, auto tf32) {
      return gram_splitk_kernel<cuda_t, decltype(cl)::value, decltype(async)::value, decltype(tf32)::value>;
    };
    with_kernel<cuda_t>(pick, fv.cl, use_async, tf32_allowed(), [&](auto kernel, bool async) {
      launch(kernel, grid, stream, smem_bytes(async), F, fv.sb, fv.ld, (int)C, (int)M, plan.ntile, (int)plan.chunk,
             vec, gacc, tile_cnt, done_cnt, loss_part, A, sAb, sA1, sA2, out.data_ptr<float>(), loss_ptr,
             (float)scale);
    });
  });
}

// The ATen calls inside the ops (float64 path) must not be autocast.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;

at::Tensor gram_cuda(const at::Tensor& features) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_cuda_features("gram", features);
  c10::cuda::CUDAGuard guard(features.device());
  if (features.scalar_type() == at::kDouble) return at::bmm(features, features.transpose(1, 2));
  const int64_t B = features.size(0), C = features.size(1);
  auto out = at::empty({B, C, C}, features.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  launch_gram(features, nullptr, out, nullptr, 1.0);
  return out;
}

std::tuple<at::Tensor, at::Tensor> style_loss_forward_cuda(const at::Tensor& features,
                                                           const at::Tensor& target, double scale) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_cuda_features("style_loss_forward", features);
  check_gram_like("target", target, features);
  c10::cuda::CUDAGuard guard(features.device());
  if (features.scalar_type() == at::kDouble) {
    auto residual = at::bmm(features, features.transpose(1, 2)).sub_(target);
    auto loss = residual.square().sum().mul_(scale);
    return {loss, residual};
  }
  const int64_t B = features.size(0), C = features.size(1);
  auto residual = at::empty({B, C, C}, features.options().dtype(at::kFloat));
  auto loss = at::empty({}, features.options().dtype(at::kFloat));
  if (residual.numel() == 0) {
    loss.zero_();
    return {loss, residual};
  }
  launch_gram(features, &target, residual, &loss, scale);
  return {loss, residual};
}

// out = grad_loss * 4 * scale * D F (through the ReluGrad pointers add and relu, which
// share out's strides), out already allocated; float32, bfloat16 or float16 features.
void launch_backward(const at::Tensor& grad_loss, const at::Tensor& residual, const KernelFeatures& kf,
                     at::Tensor& out, const void* add, const void* relu, double scale) {
  const at::Tensor& f = kf.f;
  const FeatureLayout& fv = kf.layout;
  const int64_t B = f.size(0), C = f.size(1), M = f.size(2);
  auto d = residual.contiguous();
  auto gl = grad_loss.reshape({}).to(at::kFloat).contiguous();
  const int64_t cols = fv.cl ? C : M;
  auto stream = c10::cuda::getCurrentCUDAStream();
  TORCH_CHECK(((M + TILE - 1) / TILE) * ((C + TILE - 1) / TILE) < (1LL << 31),
              "nst_fast.style_loss_backward: features too large");
  const bool vecD = aligned(d.data_ptr<float>(), 16) && C % 4 == 0;

  NST_DISPATCH_REDUCED(f.scalar_type(), "style_loss_backward", [&] {
    using cuda_t = typename CudaType<scalar_t>::type;
    const cuda_t* F = reinterpret_cast<const cuda_t*>(f.data_ptr<scalar_t>());
    cuda_t* O = reinterpret_cast<cuda_t*>(out.data_ptr<scalar_t>());
    const ReluGrad<cuda_t> relu_grad{static_cast<const cuda_t*>(add), static_cast<const cuda_t*>(relu)};
    const bool vecF = vec_ok(F, sizeof(cuda_t), fv.sb, fv.ld, cols, B);
    const BackwardOut o = backward_out(O, add, relu, sizeof(cuda_t), out.stride(0), out.stride(1), out.stride(2),
                                       fv.cl, C, M, B);
    const bool use_async = vecD && async_enabled() && async_layout_ok(F, sizeof(cuda_t), fv.sb, fv.ld, cols, B);
    const float coef = (float)(4.0 * scale);
    const float* Dp = d.data_ptr<float>();
    const float* glp = gl.data_ptr<float>();
    const BackwardPlan plan = plan_backward<cuda_t>(B, C, M, use_async, resident_setting(), multiprocessor_count());
    const dim3 grid((unsigned)plan.blocks, 1u, (unsigned)B);
    if (plan.resident) {
      with_resident_kernel<cuda_t>(fv.cl, tf32_allowed(), plan.panel, [&](auto kernel) {
        launch(kernel, grid, stream, plan.smem_bytes, Dp, F, fv.sb, fv.ld, (int)C, (int)M, O, o.sb, o.row, o.col,
               o.vec, relu_grad, glp, coef);
      });
      return;
    }
    auto pick = [](auto cl, auto async, auto tf32) {
      return style_bwd_kernel<cuda_t, decltype(cl)::value, decltype(async)::value, decltype(tf32)::value>;
    };
    with_kernel<cuda_t>(pick, fv.cl, use_async, tf32_allowed(), [&](auto kernel, bool async) {
      launch(kernel, grid, stream, smem_bytes(async), Dp, vecD, F, fv.sb, fv.ld, vecF, (int)C, (int)M, O, o.sb,
             o.row, o.col, o.vec, relu_grad, glp, coef);
    });
  });
}

at::Tensor style_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& residual,
                                    const at::Tensor& features, double scale) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_cuda_features("style_loss_backward", features);
  check_gram_like("residual", residual, features);
  check_grad_loss(grad_loss, features);
  c10::cuda::CUDAGuard guard(features.device());
  auto out = at::empty_like(features);
  if (out.numel() == 0) return out;
  if (features.scalar_type() == at::kDouble) {
    auto g = at::bmm(residual, features).mul_(grad_loss.reshape({}).to(at::kDouble) * (4.0 * scale));
    out.copy_(g);
    return out;
  }
  launch_backward(grad_loss, residual, features_for_kernel(features), out, nullptr, nullptr, scale);
  return out;
}

at::Tensor style_loss_relu_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& residual,
                                         const at::Tensor& features, double scale,
                                         const c10::optional<at::Tensor>& grad_features) {
  NoAutocast no_autocast(c10::autocast_dispatch_keyset);
  check_cuda_features("style_loss_relu_backward", features);
  check_gram_like("residual", residual, features);
  check_grad_loss(grad_loss, features);
  const bool accumulate = grad_features.has_value() && grad_features->defined();
  if (accumulate) check_grad_features(*grad_features, features);
  c10::cuda::CUDAGuard guard(features.device());
  if (features.scalar_type() == at::kDouble || features.numel() == 0) {
    auto grad = style_loss_backward_cuda(grad_loss, residual, features, scale);
    if (accumulate) grad.add_(*grad_features);
    return at::threshold_backward(grad, features, 0);
  }
  KernelFeatures kf = features_for_kernel(features);
  // out, the incoming gradient and the ReLU's output (the features) share one layout,
  // so the epilogue reads all three at one offset.
  if (!kf.f.is_non_overlapping_and_dense()) kf = features_for_kernel(kf.f.contiguous());
  auto out = at::empty_like(kf.f);
  at::Tensor grad_in;
  if (accumulate) {
    grad_in = grad_features->strides() == out.strides() ? *grad_features : at::empty_like(out).copy_(*grad_features);
  }
  launch_backward(grad_loss, residual, kf, out, accumulate ? grad_in.data_ptr() : nullptr, kf.f.data_ptr(), scale);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CUDA, m) {
  m.impl("gram", &gram_cuda);
  m.impl("style_loss_forward", &style_loss_forward_cuda);
  m.impl("style_loss_backward", &style_loss_backward_cuda);
  m.impl("style_loss_relu_backward", &style_loss_relu_backward_cuda);
}

}  // namespace nst_fast
