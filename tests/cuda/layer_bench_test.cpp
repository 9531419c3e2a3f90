// Tests of the decoder-layer prefill benchmark (src/bench/layer_bench.cpp): the site specs (host),
// the missing-device error, and on a device the packed bench layer vs the bf16 layer of its
// dequantized weights. Device tests GTEST_SKIP() without a device or a CUDA libtorch.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "resq/bench/layer_bench.h"
#include "resq/common/error.h"
#include "resq/cuda/device.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/runtime/packed_cuda.h"
#include "cuda/cuda_torch_test.h"

namespace resq {
namespace {

using format::SiteKind;

TEST(LayerBenchSpecs, Llama3SplitsAsResqJson) {
  const ModelConfig c = synthetic_shape_config("llama-3-8b");  // d 4096, 32 x 128 heads, 8 kv, ffn 14336
  const auto specs = bench_layer_site_specs(c);
  ASSERT_EQ(specs.size(), 7u);
  EXPECT_EQ(specs[0].kind, SiteKind::kQ);
  EXPECT_EQ(specs[0].N, 4096);
  EXPECT_EQ(specs[0].K8(), 512);
  EXPECT_FALSE(specs[0].permuted());
  EXPECT_EQ(specs[1].N, 1024);  // k_proj: 8 kv heads x 128
  EXPECT_EQ(specs[1].K8(), 512);
  const auto& o = specs[3];
  EXPECT_EQ(o.kind, SiteKind::kO);
  EXPECT_EQ(o.high_rule, "per_head");
  EXPECT_EQ(o.K8(), 32 * 16);  // r_h = 128 / 8 per head
  EXPECT_TRUE(o.permuted());
  const auto perm = o.packed_column_order();
  EXPECT_EQ(perm[o.K4()], 112);  // first high column: head 0, channel 128 - 16
  EXPECT_EQ(specs[4].N, 14336);
  EXPECT_EQ(specs[6].kind, SiteKind::kDown);
  EXPECT_EQ(specs[6].K, 14336);
  EXPECT_EQ(specs[6].K8(), 0);  // down_proj all 4-bit
  for (const auto& s : specs) {
    EXPECT_TRUE(s.activations.enabled);
    EXPECT_EQ(s.activations.high_count, s.high_count);
  }
  EXPECT_EQ(bench_layer_r_h(c), 16);
}

TEST(LayerBenchSpecs, RejectsWidthsNotMultipleOf8) {
  ModelConfig c = synthetic_shape_config("tiny");
  c.head_dim = 12;
  EXPECT_THROW(bench_layer_site_specs(c), ShapeError);
}

TEST(LayerBench, NoUsableDeviceIsAUsageError) {
  if (packed_cuda_unavailable_reason().empty()) GTEST_SKIP() << "a usable CUDA device is present";
  LayerBenchOptions o;
  o.models = {"tiny"};
  EXPECT_THROW(run_layer_prefill_bench(o), UsageError);
  EXPECT_THROW(make_bench_layer(synthetic_shape_config("tiny"), BenchLayerKind::kResqPacked, 0, "cuda"),
               UnsupportedError);
}

double rel_frobenius(const at::Tensor& a, const at::Tensor& ref) {
  const at::Tensor af = a.to(at::kFloat).cpu(), rf = ref.to(at::kFloat).cpu();
  return (af - rf).norm().item<double>() / rf.norm().item<double>();
}

// The same assembly (packing, o_proj perm, fused Hadamard, 4/8 KV) on the CPU integer runtime, so it
// is checked without a device: packed tiny layer vs the bf16 layer of its dequantized weights.
TEST(LayerBench, CpuPackedLayerCloseToDequantizedBf16Layer) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = synthetic_shape_config("tiny");  // d 128, 8 x 16 heads, 4 kv, ffn 352
  const Decoder packed = make_bench_layer(c, BenchLayerKind::kResqPacked, 7, "cpu");
  const Decoder ref = make_bench_layer(c, BenchLayerKind::kResqDequantized, 7, "cpu");
  EXPECT_EQ(packed.layers()[0].o->implementation(), "packed-cpu");
  EXPECT_FALSE(packed.layers()[0].down_input_transform);  // U_D fused into down_proj
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor x = at::randn({1, 64, c.hidden_size}, gen, at::TensorOptions().dtype(at::kFloat)).to(at::kBFloat16);
  const at::Tensor y = packed.run_layer(0, x, packed.rope_tables(64));
  const at::Tensor y_ref = ref.run_layer(0, x, ref.rope_tables(64));
  ASSERT_EQ(y.sizes(), x.sizes());
  EXPECT_TRUE(at::isfinite(y.to(at::kFloat)).all().item<bool>());
  EXPECT_LT(rel_frobenius(y, y_ref), 0.3);
  const at::Tensor xf = x.to(at::kFloat);
  const double delta_err = rel_frobenius(y.to(at::kFloat) - xf, y_ref.to(at::kFloat) - xf);
  std::printf("cpu packed tiny layer: relative error of output - input %.4f\n", delta_err);
  EXPECT_LT(delta_err, 0.6);
}

using LayerBenchDeviceTest = test::CudaTorchTest;

// The packed layer (4-bit activations and KV, fused Hadamard, o_proj perm) against the bf16 layer of
// the same dequantized weights and transforms: only the activation / KV quantization differs. Loose
// tolerance: 4-bit per-token activations cost ~10% relative error per linear.
TEST_F(LayerBenchDeviceTest, PackedLayerCloseToDequantizedBf16Layer) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = synthetic_shape_config("tiny");  // d 128, 8 x 16 heads, 4 kv, ffn 352
  const Decoder packed = make_bench_layer(c, BenchLayerKind::kResqPacked, 7, "cuda");
  const Decoder ref = make_bench_layer(c, BenchLayerKind::kResqDequantized, 7, "cuda");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor x = at::randn({1, 64, c.hidden_size}, gen, at::TensorOptions().dtype(at::kFloat))
                           .to(at::Device(at::kCUDA, 0), at::kBFloat16);  // [1, T, d]
  const at::Tensor y = packed.run_layer(0, x, packed.rope_tables(64));
  const at::Tensor y_ref = ref.run_layer(0, x, ref.rope_tables(64));
  ASSERT_EQ(y.sizes(), x.sizes());
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(y.to(at::kFloat)).all().item<bool>());
  const double err = rel_frobenius(y, y_ref);
  EXPECT_LT(err, 0.3) << "relative Frobenius error of the layer output";
  // The layer's own contribution (output - residual) also stays within a loose bound.
  const double delta_err = rel_frobenius(y.to(at::kFloat) - x.to(at::kFloat), y_ref.to(at::kFloat) - x.to(at::kFloat));
  EXPECT_LT(delta_err, 0.6) << "relative Frobenius error of output - input";
}

// The bf16 baseline (plain torch ops, cuBLAS) runs on the device: x [1, 32, d] -> finite [1, 32, d].
TEST_F(LayerBenchDeviceTest, Bf16LayerRuns) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = synthetic_shape_config("tiny");
  const Decoder m = make_bench_layer(c, BenchLayerKind::kBf16, 7, "cuda");
  const at::Tensor x = at::randn({1, 32, c.hidden_size}, at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA));
  const at::Tensor y = m.run_layer(0, x, m.rope_tables(32));
  EXPECT_TRUE(at::isfinite(y.to(at::kFloat)).all().item<bool>());
}

}  // namespace
}  // namespace resq
