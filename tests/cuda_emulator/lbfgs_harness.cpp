// Runs one fused L-BFGS step (csrc/cuda/lbfgs_kernels.cuh, the launches of
// csrc/cuda/lbfgs_cuda.cu) on the CPU emulator, for tests/test_cuda_emulated_lbfgs.py.
//
//   lbfgs_harness dtype=f32|f64 n=N h=H dir=PATH seed=S lr= c1= backtrack= eps= max_step=
//
// dir holds one raw file per tensor of the state, named as LBFGS.step's arguments
// (x, loss, grad, x_a, f_a, g_a, d, t, W, WW, valid, idx, steps, accepted); the step
// rewrites the ones it updates. S shuffles the order the blocks run in.
#include "emulator.h"
#include "harness_args.h"

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "lbfgs_kernels.cuh"

using namespace nst_fast::kernels::lbfgs_k;

namespace {

using harness::arg;

// A tensor's file, read whole and written back after the step.
struct File {
  std::string path;
  std::vector<unsigned char> bytes;
  File(const std::string& name, size_t size) : path(arg("dir") + "/" + name), bytes(size) {
    std::ifstream in(path, std::ios::binary);
    in.read(reinterpret_cast<char*>(bytes.data()), (std::streamsize)size);
    if (!in || (size_t)in.gcount() != size) emu::fail(("short read: " + path).c_str());
  }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(bytes.data()); }
  void save() const {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), (std::streamsize)bytes.size());
    if (!out) emu::fail(("cannot write " + path).c_str());
  }
};

template <typename T>
void run() {
  const int64_t n = std::stoll(arg("n"));
  const int h = std::stoi(arg("h"));
  const unsigned seed = (unsigned)std::stoul(arg("seed"));
  const Params p{std::stod(arg("lr")), std::stod(arg("c1")), std::stod(arg("backtrack")), std::stod(arg("eps")),
                 std::stod(arg("max_step"))};
  const size_t v = n * sizeof(T);
  File x("x", v), loss("loss", sizeof(T)), grad("grad", v), x_a("x_a", v), f_a("f_a", sizeof(T)), g_a("g_a", v),
      d("d", v), t("t", sizeof(T)), W("W", 2 * h * v), WW("WW", 4 * h * h * sizeof(double)), valid("valid", h),
      idx("idx", 8), steps("steps", 8), accepted("accepted", 8);
  const int nblocks = (int)blocks(n);
  std::vector<double> ws_mem(workspace_size(n, h), std::nan(""));  // NaN where nothing was written
  Workspace ws(ws_mem.data(), n, h);
  T *xp = x.as<T>(), *xa = x_a.as<T>(), *ga = g_a.as<T>(), *dp = d.as<T>(), *wp = W.as<T>();
  const T* gp = grad.as<T>();
  const emu::Dim grid{(unsigned)nblocks, 1u, 1u};
  emu::launch(grid, kThreads, 0, [&] { dots_kernel<T>(xp, xa, gp, ga, dp, wp, n, h, ws.partial); }, seed);
  emu::launch({1u, 1u, 1u}, kThreads, plan_smem_bytes(h), [&] {
    plan_kernel<T>(ws.partial, nblocks, h, loss.as<T>(), f_a.as<T>(), t.as<T>(), WW.as<double>(),
                   valid.as<bool>(), idx.as<int64_t>(), steps.as<int64_t>(), accepted.as<int64_t>(), ws.plan, p);
  }, seed);
  emu::launch(grid, kThreads, 0, [&] { direction_kernel<T>(xp, xa, gp, ga, dp, wp, n, h, ws.plan, ws.dmax); },
              seed);
  emu::launch(grid, kThreads, 0, [&] {
    move_kernel<T>(xp, xa, dp, n, ws.plan, ws.dmax, nblocks, t.as<T>(), p);
  }, seed);
  for (const File* f : {&x, &x_a, &f_a, &g_a, &d, &t, &W, &WW, &valid, &idx, &steps, &accepted}) f->save();
}

}  // namespace

int main(int argc, char** argv) {
  harness::parse(argc, argv);
  const std::string dtype = arg("dtype");
  if (dtype == "f32")
    run<float>();
  else if (dtype == "f64")
    run<double>();
  else
    emu::fail("dtype must be f32 or f64");
  return 0;
}
