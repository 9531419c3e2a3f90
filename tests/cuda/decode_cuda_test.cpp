// GPU tests of incremental decoding: the paged 4/8-bit CUDA KV cache against the packed-rows CPU
// cache (stored rows bit for bit, attention to fp32 rounding), the fused SDPA path against the
// reference attention, and stories260K generation on cuda (paged cache) against cpu (packed rows)
// and against the full forward. Device tests GTEST_SKIP() without a device or a CUDA libtorch.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "common/quantized_stories.h"
#include "cuda/cuda_torch_test.h"
#include "resq/common/error.h"
#include "resq/model/attention.h"
#include "resq/runtime/generate.h"
#include "resq/runtime/kv_caches.h"
#include "resq/runtime/packed_cuda.h"
#include "resq/runtime/packed_model.h"

namespace resq {
namespace {

using DecodeCudaTest = test::CudaTorchTest;

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU, at::kDouble), y = b.to(at::kCPU, at::kDouble);
  return (x - y).abs().max().item<double>() / std::max(1e-12, y.abs().max().item<double>());
}

TEST_F(DecodeCudaTest, PagedCacheMatchesPackedRowsCache) {
  c10::NoGradGuard guard;
  struct Case {
    int64_t B, H, Hkv, hd, r_h;
    at::ScalarType dtype;
  };
  for (const Case& c : {Case{2, 4, 2, 16, 2, at::kFloat}, Case{1, 8, 1, 128, 16, at::kBFloat16},
                        Case{3, 3, 3, 13, 0, at::kFloat}, Case{1, 32, 8, 128, 16, at::kBFloat16}}) {
    SCOPED_TRACE("hd " + std::to_string(c.hd) + " dtype " + std::string(c10::toString(c.dtype)));
    at::manual_seed(5);
    auto cpu_q = std::make_shared<const PackedKvCacheQuant>(c.hd, c.r_h, 1.0f);
    auto gpu_k = std::make_shared<PackedCudaKvCacheQuant>(c.hd, c.r_h, 1.0f);
    auto gpu_v = std::make_shared<PackedCudaKvCacheQuant>(c.hd, c.r_h, 1.0f);
    PackedRowsKvCache rows(cpu_q, cpu_q);
    std::unique_ptr<LayerKvCache> paged = make_paged_cuda_kv_cache(gpu_k, gpu_v);
    ASSERT_TRUE(paged);
    EXPECT_STREQ(paged->name(), "paged-cuda");
    AttentionSpec spec;
    spec.dtype = c.dtype;
    for (int64_t t : {7, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1}) {
      const at::Tensor q = at::randn({c.B, c.H, t, c.hd}).to(c.dtype), k = at::randn({c.B, c.Hkv, t, c.hd}).to(c.dtype);
      const at::Tensor v = (at::randn({c.B, c.Hkv, t, c.hd}) * 2.0).to(c.dtype);
      const at::Tensor want = rows.append_and_attend(q, k, v, spec);
      const at::Tensor got = paged->append_and_attend(q.cuda(), k.cuda(), v.cuda(), spec);
      ASSERT_TRUE(at::equal(paged->keys(at::kFloat, at::kCPU), rows.keys(at::kFloat, at::kCPU)));
      ASSERT_TRUE(at::equal(paged->values(at::kFloat, at::kCPU), rows.values(at::kFloat, at::kCPU)));
      // bf16 results are rounded once more on each side.
      EXPECT_LT(rel_err(got, want), c.dtype == at::kFloat ? 2e-5 : 2e-2) << "after position " << paged->length();
    }
    EXPECT_EQ(paged->length(), rows.length());
    paged->truncate(3);
    EXPECT_EQ(paged->length(), 3);
  }
}

TEST_F(DecodeCudaTest, FusedAttentionMatchesReference) {
  if (!fused_attention_compiled()) GTEST_SKIP() << "this libtorch has no scaled_dot_product_attention";
  c10::NoGradGuard guard;
  at::manual_seed(9);
  const int64_t B = 2, H = 8, Hkv = 2, L = 77, hd = 64;
  const auto opts = at::TensorOptions().device(cuda());
  const at::Tensor q = at::randn({B, H, L, hd}, opts), k = at::randn({B, Hkv, L, hd}, opts);
  const at::Tensor v = at::randn({B, Hkv, L, hd}, opts);
  for (const std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(20)}) {
    for (const int64_t t : {L, int64_t{5}, int64_t{1}}) {
      AttentionSpec ref, fused;
      ref.window = fused.window = window;
      fused.path = AttentionPath::kFused;
      const at::Tensor qs = q.narrow(2, L - t, t);
      EXPECT_LT(rel_err(causal_attention(qs, k, v, fused), causal_attention(qs, k, v, ref)), 1e-4)
          << "t " << t << (window ? " windowed" : "");
    }
  }
}

TEST_F(DecodeCudaTest, StoriesGenerationOnCudaMatchesCpuAndForward) {
  c10::NoGradGuard guard;
  const std::string dir = test::quantized_stories("resq-rtn", /*seed=*/1, 8, 128);
  LoadOptions on_cuda;
  on_cuda.device = "cuda";
  Decoder g = load_model_for_eval(dir, on_cuda);
  const Decoder c = load_model_for_eval(dir, LoadOptions{});
  DecodeSession sg(g), sc(c);
  EXPECT_STREQ(sg.cache_kind(0), "paged-cuda");
  EXPECT_STREQ(sc.cache_kind(0), "packed-rows");
  std::vector<int64_t> ids;
  for (int64_t t = 0; t < 40; ++t) ids.push_back((t * 29 + 5) % 512);
  const auto lopts = at::TensorOptions().dtype(at::kLong);
  at::Tensor seq = at::tensor(at::ArrayRef<int64_t>(ids), lopts).view({2, 20});
  at::Tensor lg = sg.step(seq).cpu(), lc = sc.step(seq);
  EXPECT_LT(rel_err(lg, lc), 2e-2);
  for (int step = 0; step < 12; ++step) {
    const at::Tensor next = at::argmax(lc.select(1, lc.size(1) - 1), -1).view({2, 1});  // the CPU's greedy choice
    seq = at::cat({seq, next}, 1);
    lg = sg.step(next).cpu();
    lc = sc.step(next);
    EXPECT_LT(rel_err(lg, lc), 2e-2) << "step " << step;
  }
  EXPECT_EQ(sg.position(), 32);
  EXPECT_GT(sg.cache_bytes().stored, 0);
  EXPECT_EQ(sg.cache_bytes().packed_layers, g.config().num_layers);
  // The last step of the session equals the full forward's last position on the same device.
  const at::Tensor full = g.forward(seq).cpu();
  EXPECT_LT(rel_err(lg.select(1, 0), full.select(1, full.size(1) - 1)), 2e-2);
}

}  // namespace
}  // namespace resq
