// Every model shape's online Hadamard runs on the GPU quantizer (host side, no device needed):
// for each `make-model` shape (synthetic_shape_names) and each supported family's intermediate
// size, the U_D transform is built as the quantization pipeline builds it (make_online_hadamard
// with random signs, from Rng::derive(seed, "U_D")) and turned into kernel parameters as
// PackedCudaLinear does (make_hadamard_row_host); then the launcher's host-side checks
// (check_hadamard_row, kMaxActQuantRow, plan_hadamard_mix with the shared memory of every compiled
// architecture) must accept it, and the host emulation of the kernel's thread / group
// decomposition must equal hadamard_row_reference bit for bit on one row.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/act_quant.cuh"
#include "cuda/act_transform.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/model/synthetic.h"

namespace {

using namespace resq::gpu;  // NOLINT

struct Size {
  std::string what;
  int64_t n;
};

std::vector<Size> model_sizes() {
  std::vector<Size> sizes;
  for (const std::string& name : resq::synthetic_shape_names()) {
    sizes.push_back({"make-model --shape " + name, resq::synthetic_shape_config(name).intermediate_size});
  }
  const Size families[] = {{"Llama-2-7B", 11008},    {"Llama-3-8B / Mistral-7B", 14336},
                           {"Llama-3.2-1B", 8192},   {"Qwen2.5-0.5B", 4864},
                           {"Qwen2.5-7B", 18944},    {"stories260K", 172}};
  for (const Size& f : families) sizes.push_back(f);
  return sizes;
}

// cudaDevAttrMaxSharedMemoryPerBlockOptin of sm_80, sm_86 / sm_89 and sm_90a.
const int64_t kOptinBytes[] = {163 * 1024, 99 * 1024, 227 * 1024};

TEST(CudaActQuantShapes, EveryModelOnlineHadamardPassesTheLauncherChecks) {
  const std::vector<Size> sizes = model_sizes();
  ASSERT_GE(sizes.size(), 15u);
  for (const Size& s : sizes) {
    SCOPED_TRACE(s.what + ", n = " + std::to_string(s.n));
    resq::Rng rng = resq::Rng::derive(1234, "U_D");
    const resq::OnlineHadamard t = resq::make_online_hadamard(s.n, rng, /*random_signs=*/true);
    const HadamardRowHost row = make_hadamard_row_host(t.n, t.pow2, t.block, t.block_matrix, t.signs);
    const HadamardRowParams p = row.view();
    ASSERT_LE(s.n, kMaxActQuantRow);
    ASSERT_NO_THROW(check_hadamard_row(p, s.n, "act_quant_cuda: "));
    int64_t smallest_group = t.pow2;
    for (int64_t optin : kOptinBytes) {
      const int64_t budget = optin - kActQuantStaticSmemBytes;
      HadamardMixPlan plan;
      ASSERT_NO_THROW(plan = plan_hadamard_mix(t.n, t.pow2, t.block, budget, "act_quant_cuda: "))
          << "opt-in " << optin << " bytes";
      EXPECT_LE(plan.smem_bytes, budget);
      if (t.block > 1) smallest_group = std::min(smallest_group, plan.group);
    }
    // One row through the kernel's decomposition (the smallest group the devices use).
    std::mt19937 gen(static_cast<uint32_t>(s.n));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(s.n));
    for (auto& v : x) v = normal(gen) * (gen() % 31 == 0 ? 25.0f : 1.0f);
    std::vector<float> want = x, got = x;
    hadamard_row_reference(p, want.data());
    emulate_hadamard_row_kernel(p, t.block > 1 ? smallest_group : 0, kActQuantThreads, false, got.data());
    ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0);
  }
}

// The factorizations the docs (docs/CUDA.md) and tests/kernels/act_hadamard_test.cpp rely on,
// worked out by hand from hadamard_plan's rule.
TEST(CudaActQuantShapes, FamilyFactorizationsAreTheDocumentedOnes) {
  struct Want {
    int64_t n, pow2, block;
  };
  const Want wants[] = {{11008, 32, 344}, {14336, 512, 28}, {8192, 8192, 1}, {4864, 64, 76},
                        {18944, 128, 148}, {172, 4, 43},    {352, 8, 44},    {160, 8, 20},
                        {192, 16, 12}};
  for (const Want& w : wants) {
    resq::Rng rng(5);
    const resq::OnlineHadamard t = resq::make_online_hadamard(w.n, rng, /*random_signs=*/false);
    EXPECT_EQ(t.pow2, w.pow2) << w.n << ": " << t.construction;
    EXPECT_EQ(t.block, w.block) << w.n << ": " << t.construction;
  }
}

}  // namespace
