// Runs one nst_fast style-loss CUDA kernel on the CPU emulator, with the host side's
// own launch arithmetic (csrc/cuda/style_loss_forward.cuh, style_loss_backward.cuh and
// style_loss_plan.cuh), for tests/test_cuda_emulated.py.
//
//   harness key=value ...
//     op=gram|forward|backward  dtype=f32|bf16|f16  tf32=0|1  async=0|1 (NST_FAST_CUDA_ASYNC)
//     blocks=N (split-K target: blocks per SM x SMs)  seed=N (block order)
//     sms=N (multiprocessors: the D-resident backward's grid)  resident=0|1|256 (NST_FAST_CUDA_RESIDENT)
//     B= C= M=  fs=s0,s1,s2 (feature strides)  foff= (elements before the features)
//     features=PATH (raw, foff + extent elements)
//     forward:  target=PATH (float32, strides ts=a0,a1,a2, extent elements)  scale=
//     backward: residual=PATH (float32 B*C*C)  grad=  scale=  os=o0,o1,o2 (output strides)
//               style_loss_relu_backward's epilogue: relu=1 (the features are the ReLU's
//               output; os must equal fs)  upstream=PATH (the gradient from above, in
//               dtype, uoff elements then the extent of os)  uoff=
//     out=PATH
//     profile=PATH (a build with -DNST_EMU_PROFILE: the memory-access profile, access_profile.h)
//   Writes gram / residual (B*C*C float32, then the loss for forward) or the gradient
//   buffer (extent of os, in dtype) to out, and prints the variant that ran.
#include "emulator.h"
#include "harness_args.h"
#include "harness_buffers.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <sstream>
#include <string>

using std::min;  // the kernels call min() as in CUDA

#include "style_loss_backward.cuh"
#include "style_loss_forward.cuh"
#include "style_loss_plan.cuh"

using namespace nst_fast::kernels;

namespace {

using harness::arg;
using harness::Buffer;
using harness::read_file;
using harness::watch;
using harness::write_file;
long long num(const std::string& k) { return std::stoll(arg(k)); }
double real(const std::string& k) { return std::stod(arg(k)); }
void triple(const std::string& k, long long (&v)[3]) {
  std::stringstream ss(arg(k));
  std::string part;
  for (int i = 0; i < 3; ++i) {
    if (!std::getline(ss, part, ',')) emu::fail(("three strides expected in " + k).c_str());
    v[i] = std::stoll(part);
  }
}

long long extent(const long long (&s)[3], long long B, long long C, long long M) {
  return (B - 1) * s[0] + (C - 1) * s[1] + (M - 1) * s[2] + 1;
}

template <typename T>
int run() {
  const std::string op = arg("op");
  const bool tf32 = num("tf32") != 0, async_enabled = num("async") != 0;
  const unsigned seed = (unsigned)num("seed");
  const long long B = num("B"), C = num("C"), M = num("M"), foff = num("foff");
  long long fs[3];
  triple("fs", fs);
  const FeatureLayout fv = feature_layout(fs[0], fs[1], fs[2]);
  if (!fv.dense) emu::fail("features with no unit stride: the host side copies them first");
  Buffer fbuf = read_file(arg("features"), (size_t)(foff + extent(fs, B, C, M)) * sizeof(T));
  watch(fbuf, "features");
  const T* F = fbuf.as<T>() + foff;
  const long long cols = fv.cl ? C : M;

  if (op == "gram" || op == "forward") {
    const bool forward = op == "forward";
    const GramPlan plan = plan_gram(B, C, M, num("blocks"));
    const long long n_g = B * C * C, n_t = B * plan.tiles;
    Buffer ws((size_t)(n_g + 2 * n_t + 1) * 4);
    std::memset(ws.p, 0, ws.bytes);
    watch(ws, "workspace");
    float* gacc = ws.as<float>();
    int* tile_cnt = reinterpret_cast<int*>(gacc + n_g);
    int* done_cnt = tile_cnt + n_t;
    float* loss_part = reinterpret_cast<float*>(done_cnt + 1);
    const float* A = nullptr;
    long long ts[3] = {0, 0, 0};
    Buffer tbuf(0);
    if (forward) {
      triple("ts", ts);
      tbuf = read_file(arg("target"), (size_t)extent(ts, B, C, C) * 4);
      A = tbuf.as<float>();
      watch(tbuf, "target");
    }
    Buffer out((size_t)(n_g + forward) * 4);  // the Gram or residual, then the loss
    std::memset(out.p, 0xFF, out.bytes);       // NaN where the kernel writes nothing
    watch(out, "out");
    float* loss = forward ? out.as<float>() + n_g : nullptr;
    const bool vec = vec_ok(F, sizeof(T), fv.sb, fv.ld, cols, B);
    const bool use_async = async_enabled && async_layout_ok(F, sizeof(T), fv.sb, fv.ld, cols, B);
    auto pick = [](auto cl, auto async, auto tf) {
      return gram_splitk_kernel<T, decltype(cl)::value, decltype(async)::value, decltype(tf)::value>;
    };
    with_kernel<T>(pick, fv.cl, use_async, tf32, [&](auto kernel, bool async) {
      std::printf("variant cl=%d async=%d vec=%d splits=%lld tiles=%lld\n", (int)fv.cl, (int)async, (int)vec,
                  plan.splits, plan.tiles);
      emu::launch({(unsigned)plan.tiles, (unsigned)plan.splits, (unsigned)B}, THREADS,
                  async ? SMEM_ASYNC_BYTES : SMEM_SYNC_BYTES, [&] {
                    kernel(F, fv.sb, fv.ld, (int)C, (int)M, plan.ntile, (int)plan.chunk, vec, gacc, tile_cnt,
                           done_cnt, loss_part, A, ts[0], ts[1], ts[2], out.as<float>(),
                           loss, forward ? (float)real("scale") : 1.f);
                  }, seed);
    });
    write_file(arg("out"), out.p, out.bytes);
    return 0;
  }
  if (op == "backward") {
    Buffer dbuf = read_file(arg("residual"), (size_t)(B * C * C) * 4);
    watch(dbuf, "residual");
    const float grad = (float)real("grad");
    long long os[3];
    triple("os", os);
    const long long olen = extent(os, B, C, M);
    Buffer obuf((size_t)olen * sizeof(T));
    std::memset(obuf.p, 0xFF, obuf.bytes);  // NaN where the kernel writes nothing
    watch(obuf, "out");
    T* O = obuf.as<T>();
    const float* D = dbuf.as<float>();
    const bool vecD = aligned(D, 16) && C % 4 == 0;
    const bool vecF = vec_ok(F, sizeof(T), fv.sb, fv.ld, cols, B);
    const bool relu = harness::args().count("relu") && num("relu") != 0;
    if (relu && (os[0] != fs[0] || os[1] != fs[1] || os[2] != fs[2]))
      emu::fail("relu=1: the output must have the features' strides (the host side makes them so)");
    Buffer ubuf(0);
    const T* add = nullptr;
    if (harness::args().count("upstream")) {
      const long long uoff = num("uoff");
      ubuf = read_file(arg("upstream"), (size_t)(uoff + olen) * sizeof(T));
      watch(ubuf, "upstream");
      add = ubuf.as<T>() + uoff;
    }
    const ReluGrad<T> relu_grad{add, relu ? F : nullptr};
    const BackwardOut o = backward_out(O, add, relu_grad.relu, sizeof(T), os[0], os[1], os[2], fv.cl, C, M, B);
    const bool use_async = vecD && async_enabled && async_layout_ok(F, sizeof(T), fv.sb, fv.ld, cols, B);
    const BackwardPlan plan = plan_backward<T>(B, C, M, use_async, resident_limit(num("resident")), num("sms"));
    const emu::Dim grid{(unsigned)plan.blocks, 1u, (unsigned)B};
    const float coef = (float)(4.0 * real("scale"));
    if (plan.resident) {
      with_resident_kernel<T>(fv.cl, tf32, plan.panel, [&](auto kernel) {
        std::printf("variant cl=%d async=1 resident=1 panel=%d blocks=%lld vec_out=%d\n", (int)fv.cl, plan.panel,
                    plan.blocks, (int)o.vec);
        emu::launch(grid, THREADS, plan.smem_bytes, [&] {
          kernel(D, F, fv.sb, fv.ld, (int)C, (int)M, O, o.sb, o.row, o.col, o.vec, relu_grad, &grad, coef);
        }, seed);
      });
      write_file(arg("out"), obuf.p, obuf.bytes);
      return 0;
    }
    auto pick = [](auto cl, auto async, auto tf) {
      return style_bwd_kernel<T, decltype(cl)::value, decltype(async)::value, decltype(tf)::value>;
    };
    with_kernel<T>(pick, fv.cl, use_async, tf32, [&](auto kernel, bool async) {
      std::printf("variant cl=%d async=%d resident=0 vec=%d vec_out=%d\n", (int)fv.cl, (int)async, (int)vecF,
                  (int)o.vec);
      emu::launch(grid, THREADS, plan.smem_bytes, [&] {
        kernel(D, vecD, F, fv.sb, fv.ld, vecF, (int)C, (int)M, O, o.sb, o.row, o.col, o.vec, relu_grad, &grad,
               coef);
      }, seed);
    });
    write_file(arg("out"), obuf.p, obuf.bytes);
    return 0;
  }
  emu::fail("op must be gram, forward or backward");
}

}  // namespace

int main(int argc, char** argv) {
  harness::parse(argc, argv);
  const std::string dtype = arg("dtype");
  int rc = 0;
  if (dtype == "f32")
    rc = run<float>();
  else if (dtype == "bf16")
    rc = run<__nv_bfloat16>();
  else if (dtype == "f16")
    rc = run<__half>();
  else
    emu::fail("dtype must be f32, bf16 or f16");
#ifdef NST_EMU_PROFILE
  if (harness::args().count("profile")) emu::profile::write(harness::args()["profile"].c_str());
#endif
  return rc;
}
