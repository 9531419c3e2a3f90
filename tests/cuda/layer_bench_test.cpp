// Tests of the decoder-layer prefill benchmark (src/bench/layer_bench.cpp, plain_layer.cpp): the
// site specs, the plain-libtorch baseline layer against Decoder::run_layer (host), the missing-device
// error, and on a device the packed bench layer vs the bf16 layer of its dequantized weights and the
// plain layer in bf16. Device tests GTEST_SKIP() without a device or a CUDA libtorch.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "resq/bench/layer_bench.h"
#include "resq/bench/plain_layer.h"
#include "resq/common/error.h"
#include "resq/cuda/device.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/runtime/packed_cuda.h"
#include "resq/runtime/packed_model.h"
#include "resq/quant/quantizers.h"
#include "resq/format/packed.h"
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
  EXPECT_EQ(o.high_rule, format::HighRule::kPerHead);
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

// The bench packing (torch ops in layer_bench.cpp) against the format's scalar reference packer on
// the RTN codes of the drawn weights, byte for byte, for every site (o_proj with its per-head column
// permutation): tiny (even K4) and a shape with odd K4 (d 72 = 9 heads x 8: K4 = 63, pad nibble).
TEST(LayerBenchSpecs, PackedSitesEqualReferencePacking) {
  c10::NoGradGuard no_grad;
  ModelConfig odd = synthetic_shape_config("tiny");
  odd.hidden_size = 72;
  odd.num_heads = 9;
  odd.num_kv_heads = 3;
  odd.head_dim = 8;
  odd.intermediate_size = 40;
  for (const ModelConfig& c : {synthetic_shape_config("tiny"), odd}) {
    const Decoder m = make_bench_layer(c, BenchLayerKind::kResqPacked, 4, "cpu");
    const PlainLayerWeights w = draw_bench_layer_weights(c, 4, 0, "cpu");
    const auto specs = bench_layer_site_specs(c);
    const DecoderLayer& L = m.layers()[0];
    const at::Tensor* ws[] = {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down};
    const std::shared_ptr<Linear>* lins[] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto& s = specs[i];
      SCOPED_TRACE("d " + std::to_string(c.hidden_size) + ", site " + std::to_string(i));
      const auto* p = dynamic_cast<const PackedCpuLinear*>(lins[i]->get());
      ASSERT_NE(p, nullptr);
      const at::Tensor mask = s.high_rule == format::HighRule::kPerHead ? high_mask_per_head(s.K / c.head_dim, c.head_dim, s.high_count)
                                                        : high_mask_last(s.K, s.high_count);
      const QuantizedWeight qw = rtn_quantize_weight(*ws[i], mask, 4, 8, 1.0, false);
      std::vector<int32_t> order = s.packed_column_order();
      const at::Tensor perm = at::from_blob(order.data(), {s.K}, at::TensorOptions().dtype(at::kInt)).to(at::kLong);
      const at::Tensor q = qw.q.index_select(1, perm).contiguous();
      std::vector<uint8_t> w4(static_cast<size_t>(s.N * format::packed4_row_bytes(s.K4())));
      std::vector<int8_t> w8(static_cast<size_t>(s.N * s.K8()));
      format::pack_weights_reference(q.data_ptr<int8_t>(), s.N, s.K4(), s.K8(), w4.data(), w8.data());
      EXPECT_EQ(p->packed().w4, w4);
      EXPECT_EQ(p->packed().w8, w8);
      if (i == 3) {
        EXPECT_EQ(s.K4() % 2, c.hidden_size == 72 ? 1 : 0);
      }
    }
  }
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

// Largest |a - b| over the largest |b| (a scale-aware max error; both [B, T, d]).
double rel_max(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ad = a.to(at::kDouble).cpu(), bd = b.to(at::kDouble).cpu();
  return (ad - bd).abs().max().item<double>() / bd.abs().max().item<double>();
}

// The baseline computes the function resq's bf16 bench layer computes: the plain layer (its own
// RMSNorm, at::linear, RoPE tables, SDPA / explicit attention) against Decoder::run_layer of
// make_bench_layer(kBf16) built from the same seed, in float32 and float64 on the CPU. Compared on the
// layer's own contribution y - x (the residual x ~ N(0, 1) would hide errors of the small update).
// Tolerances: the two may sum the same products in different orders (GEMMs of K <= 352 terms, a
// softmax over <= 37 keys; SDPA kernels on a libtorch >= 2.0), which moves the result by a few units
// of roundoff of the largest partial sums: bound 1e-5 relative to max |y - x| in float32 (u = 6e-8,
// so ~100 u of headroom), 1e-13 in float64 (u = 1.1e-16). Measured with Debian's CPU libtorch 1.13:
// 0 (its kernels happen to sum in the same order). Mutations of the plain layer measured: RoPE
// rotate_half sign 9e-3 to 1.8e-2, GQA map h % Hkv instead of h / G 1.5e-2 to 3.9e-2; a bf16-rounded
// operand (u = 4e-3) is of the same order — all far above the bounds.
struct PlainCase {
  const char* shape;
  at::ScalarType dtype;
  double tol;
};

class PlainLayerVsDecoder : public ::testing::TestWithParam<PlainCase> {};

TEST_P(PlainLayerVsDecoder, SameFunctionToRounding) {
  c10::NoGradGuard no_grad;
  const PlainCase pc = GetParam();
  const ModelConfig c = synthetic_shape_config(pc.shape);
  const std::string dtype = pc.dtype == at::kDouble ? "float64" : "float32";
  BenchBuildOptions build;
  build.dtype = dtype;
  const Decoder m = make_bench_layer(c, BenchLayerKind::kBf16, 11, "cpu", build);
  const PlainTorchLayer plain(c, to_device(draw_bench_layer_weights(c, 11, 0, "cpu"), pc.dtype, at::kCPU));
  // The same weights, bit for bit (both drawn by draw_bench_layer_weights).
  const auto* q = dynamic_cast<const DenseLinear*>(m.layers()[0].q.get());
  ASSERT_NE(q, nullptr);
  EXPECT_TRUE(at::equal(q->weight(), plain.weights().q));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const int64_t B = 2, T = 37;
  const at::Tensor x = at::randn({B, T, c.hidden_size}, gen, at::TensorOptions().dtype(at::kDouble)).to(pc.dtype);
  const at::Tensor y_dec = m.run_layer(0, x, m.rope_tables(T));
  const at::Tensor y_plain = plain.forward(x);
  ASSERT_EQ(y_plain.sizes(), x.sizes());
  EXPECT_EQ(y_plain.scalar_type(), pc.dtype);
  const double err = rel_max(y_plain - x, y_dec - x);
  std::printf("%s %s (attention %s): max |plain - decoder| / max |y - x| = %.3g\n", pc.shape, dtype.c_str(),
              PlainTorchLayer::attention_path(), err);
  EXPECT_LT(err, pc.tol);
  // Causality: the first 5 positions do not depend on the later ones.
  const at::Tensor y5 = plain.forward(x.narrow(1, 0, 5).contiguous());
  EXPECT_LT(rel_max(y5 - x.narrow(1, 0, 5), y_plain.narrow(1, 0, 5) - x.narrow(1, 0, 5)), pc.tol);
}

// tiny: GQA 8/4 heads, hd 16; tiny-gqa-tied: 8/2 heads, hd 8; tiny-llama3: Llama-3.1 RoPE scaling.
INSTANTIATE_TEST_SUITE_P(Shapes, PlainLayerVsDecoder,
                         ::testing::Values(PlainCase{"tiny", at::kFloat, 1e-5}, PlainCase{"tiny-gqa-tied", at::kFloat, 1e-5},
                                           PlainCase{"tiny-llama3", at::kFloat, 1e-5},
                                           PlainCase{"tiny", at::kDouble, 1e-13},
                                           PlainCase{"tiny-llama3", at::kDouble, 1e-13}));

TEST(PlainLayer, RejectsWrongShapes) {
  const ModelConfig c = synthetic_shape_config("tiny");
  PlainLayerWeights w = draw_bench_layer_weights(c, 0, 0, "cpu");
  EXPECT_THROW(PlainTorchLayer(c, w).forward(at::zeros({1, 4, c.hidden_size + 1})), ShapeError);
  w.k = w.k.t();  // [d, kv_size] instead of [kv_size, d]
  EXPECT_THROW(PlainTorchLayer(c, w), ShapeError);
  const std::string path = PlainTorchLayer::attention_path();
  EXPECT_TRUE(path == "sdpa-gqa" || path == "sdpa-expand-kv" || path == "explicit-softmax") << path;
}

// Different layers of a bench model get different weights; the same (seed, layer) the same ones.
TEST(PlainLayer, WeightsAreSeededPerLayer) {
  const ModelConfig c = synthetic_shape_config("tiny");
  const PlainLayerWeights a = draw_bench_layer_weights(c, 3, 0, "cpu"), b = draw_bench_layer_weights(c, 3, 1, "cpu");
  EXPECT_TRUE(at::equal(a.down, draw_bench_layer_weights(c, 3, 0, "cpu").down));
  EXPECT_FALSE(at::equal(a.down, b.down));
  EXPECT_NEAR(a.gate.std().item<double>(), 0.02, 0.002);
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

// The plain baseline in bf16 on the device (SDPA where the libtorch has it) against resq's bf16 layer
// of the same weights: both round to bf16 at different points, so they agree to bf16 accuracy only.
TEST_F(LayerBenchDeviceTest, PlainLayerCloseToBf16LayerOnDevice) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = synthetic_shape_config("tiny");
  const PlainLayerWeights w = draw_bench_layer_weights(c, 7, 0, "cpu");
  const Decoder m = make_bench_layer(c, BenchLayerKind::kBf16, 7, "cuda", {}, &w);
  const PlainTorchLayer plain(c, to_device(w, at::kBFloat16, cuda()));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor x = at::randn({1, 64, c.hidden_size}, gen, at::TensorOptions().dtype(at::kFloat)).to(cuda(), at::kBFloat16);
  const at::Tensor y = plain.forward(x), y_ref = m.run_layer(0, x, m.rope_tables(64));
  const at::Tensor xf = x.to(at::kFloat);
  const double err = rel_frobenius(y.to(at::kFloat) - xf, y_ref.to(at::kFloat) - xf);
  std::printf("device bf16 plain vs resq bf16 layer (%s): relative error of output - input %.4f\n",
              PlainTorchLayer::attention_path(), err);
  EXPECT_LT(err, 0.05);
}

}  // namespace
}  // namespace resq
