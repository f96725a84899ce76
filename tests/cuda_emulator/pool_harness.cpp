// Runs the relu + 2x2 max pool CUDA kernels (csrc/cuda/relu_pool_kernels.cuh) on the
// CPU emulator, with the host side's own launch plan, for
// tests/test_cuda_emulated_pool.py.
//
//   pool_harness key=value ...
//     op=forward|backward  dtype=f32|bf16|f16  seed=N (block order)
//     size=B,C,H,W  stride=s0,s1,s2,s3 (x, act, out and grad_act)  pstride= (pooled, grad_pooled)
//     off=N (elements before every buffer's data: 0, or a misalignment)
//     blocks=N (the most blocks; the kernels' loops stride over the rest)
//     forward:  x=PATH (read, and rewritten with the ReLU's output)  pooled=PATH (written)
//     backward: act=PATH  grad_pooled=PATH  [grad_act=PATH]  out=PATH (written)
//     profile=PATH (a build with -DNST_EMU_PROFILE: the memory-access profile, access_profile.h)
//   Every file holds off elements, then the tensor's extent; prints the launch.
#include "emulator.h"
#include "harness_args.h"
#include "harness_buffers.h"

#include <sstream>
#include <string>

#include "relu_pool_kernels.cuh"

using namespace nst_fast::kernels::pool_k;

namespace {

using harness::arg;
using harness::Buffer;

void four(const std::string& k, int64_t (&v)[4]) {
  std::stringstream ss(arg(k));
  std::string part;
  for (int i = 0; i < 4; ++i) {
    if (!std::getline(ss, part, ',')) emu::fail(("four values expected in " + k).c_str());
    v[i] = std::stoll(part);
  }
}

int64_t extent(const int64_t (&size)[4], const int64_t (&stride)[4]) {
  int64_t e = 1;
  for (int d = 0; d < 4; ++d) {
    if (size[d] == 0) return 0;
    e += (size[d] - 1) * stride[d];
  }
  return e;
}

// A tensor's buffer: off elements, then its extent.
struct Tensor {
  Buffer buf;
  Strided s;
  Tensor(const std::string& path, const int64_t (&size)[4], const int64_t (&stride)[4], int64_t off, size_t item,
         bool read)
      : buf((size_t)(off + extent(size, stride)) * item) {
    if (read) buf = harness::read_file(path, buf.bytes);
    else std::memset(buf.p, 0xFF, buf.bytes);  // NaN where the kernel writes nothing
    for (int d = 0; d < 4; ++d) s.size[d] = size[d], s.stride[d] = stride[d];
    s.data = buf.p + off * item;
  }
  template <typename T>
  T* at() const { return static_cast<T*>(const_cast<void*>(s.data)); }
};

template <typename T>
void run() {
  const std::string op = arg("op");
  const unsigned seed = (unsigned)std::stoul(arg("seed"));
  const int64_t off = std::stoll(arg("off")), max_blocks = std::stoll(arg("blocks"));
  int64_t size[4], stride[4], pstride[4];
  four("size", size);
  four("stride", stride);
  four("pstride", pstride);
  const int64_t psize[4] = {size[0], size[1], size[2] / 2, size[3] / 2};
  const size_t item = sizeof(T);
  if (op == "forward") {
    Tensor x(arg("x"), size, stride, off, item, true), pooled(arg("pooled"), psize, pstride, off, item, false);
    harness::watch(x.buf, "x"), harness::watch(pooled.buf, "pooled");
    const Launch l = plan_launch<T>(x.s, pooled.s, {&x.s, &pooled.s}, max_blocks);
    std::printf("v=%d blocks=%u\n", l.v, l.blocks);
    with_width<T>(l.v, [&](auto v) {
      emu::launch({l.blocks, 1u, 1u}, kThreads, 0,
                  [&] { relu_max_pool2_kernel<T, decltype(v)::value>(x.at<T>(), pooled.at<T>(), l.g); }, seed);
    });
    harness::write_file(arg("x"), x.buf.p, x.buf.bytes);
    harness::write_file(arg("pooled"), pooled.buf.p, pooled.buf.bytes);
    return;
  }
  if (op != "backward") emu::fail("op must be forward or backward");
  const bool upstream = harness::args().count("grad_act") != 0;
  Tensor act(arg("act"), size, stride, off, item, true), gp(arg("grad_pooled"), psize, pstride, off, item, true),
      out(arg("out"), size, stride, off, item, false),
      extra(upstream ? arg("grad_act") : "", size, stride, off, item, upstream);
  harness::watch(act.buf, "act"), harness::watch(gp.buf, "grad_pooled"), harness::watch(out.buf, "out");
  if (upstream) harness::watch(extra.buf, "grad_act");
  const Launch l = plan_launch<T>(act.s, gp.s, {&act.s, &gp.s, &out.s, upstream ? &extra.s : nullptr}, max_blocks);
  std::printf("v=%d blocks=%u\n", l.v, l.blocks);
  with_width<T>(l.v, [&](auto v) {
    emu::launch({l.blocks, 1u, 1u}, kThreads, 0, [&] {
      relu_max_pool2_backward_kernel<T, decltype(v)::value>(act.at<T>(), gp.at<T>(),
                                                            upstream ? extra.at<T>() : nullptr, out.at<T>(), l.g);
    }, seed);
  });
  harness::write_file(arg("out"), out.buf.p, out.buf.bytes);
}

}  // namespace

int main(int argc, char** argv) {
  harness::parse(argc, argv);
  const std::string dtype = arg("dtype");
  if (dtype == "f32")
    run<float>();
  else if (dtype == "bf16")
    run<__nv_bfloat16>();
  else if (dtype == "f16")
    run<__half>();
  else
    emu::fail("dtype must be f32, bf16 or f16");
#ifdef NST_EMU_PROFILE
  if (harness::args().count("profile")) emu::profile::write(harness::args()["profile"].c_str());
#endif
  return 0;
}
