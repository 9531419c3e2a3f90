// Decoder-layer prefill benchmark of `resq bench` (layer_bench.h): a plain-libtorch bf16 layer (the
// baseline), resq's bf16 layer and the resq packed layer built from the same random weights, timed
// with CUDA events; and build_bench_layer, the one builder of bench layers (also for --e2e).
#include "resq/bench/layer_bench.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <functional>
#include <memory>

#include "resq/bench/plain_layer.h"
#include "resq/common/error.h"
#include "resq/format/layout.h"
#include "resq/format/packed.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/quant/quantizers.h"
#include "resq/runtime/backend.h"
#include "resq/runtime/packed_model.h"
#include "resq/transforms/online.h"

namespace resq {

using format::SiteKind;
using format::SiteSpec;

namespace {

// The bench layer splits as configs/resq.json does: format::LayoutParams' defaults are the paper's.
format::ModelLayout bench_layout(const ModelConfig& c) {
  const format::LayoutParams params;
  if (c.hidden_size <= 0 || c.head_dim <= 0 || c.intermediate_size <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0) {
    throw ShapeError("bench layer: the config needs positive hidden_size, head_dim, intermediate_size and heads");
  }
  // Benchmarked shapes split exactly (no rounding of the subspace sizes).
  if (!format::high_rank_is_exact(params.high_fraction, c.hidden_size) ||
      !format::high_rank_is_exact(params.high_fraction, c.head_dim)) {
    throw ShapeError("bench layer: hidden_size " + std::to_string(c.hidden_size) + " and head_dim " + std::to_string(c.head_dim) +
                     " must split exactly at high_fraction " + std::to_string(params.high_fraction) +
                     " (1/8 of the columns are 8-bit)");
  }
  return format::model_layout(c, params);
}

}  // namespace

int64_t bench_layer_r_h(const ModelConfig& c) { return bench_layout(c).r_h; }

std::vector<SiteSpec> bench_layer_site_specs(const ModelConfig& c) {
  const format::ModelLayout layout = bench_layout(c);
  std::vector<SiteSpec> specs;
  for (const auto& [kind, s] : layout.sites) {
    specs.push_back(s);
    specs.back().has_bias = false;  // bench layers have no biases (draw_bench_layer_weights)
  }
  return specs;
}

namespace {

// RTN-quantized w [N, K] (any device) -> the LinearData a checkpoint reader would return for spec:
// the packed linear of pack_quantized_weight (the conversion the checkpoint writer is given), the
// site's column order.
format::LinearData packed_site_data(const SiteSpec& s, const QuantizedWeight& qw) {
  format::LinearData d;
  d.spec = s;
  d.perm = s.packed_column_order();
  d.packed = pack_quantized_weight(qw, d.perm, at::Tensor(), std::string("bench layer: ") + format::site_name(s.kind));
  return d;
}

void check_packed_device(BenchLayerKind kind, const at::Device& dev) {
  if (kind != BenchLayerKind::kResqPacked || dev.is_cpu()) return;
  if (!dev.is_cuda()) throw UnsupportedError("bench layer: the packed layer runs on cuda or cpu, not " + dev.str());
  const std::string why = packed_cuda_unavailable_reason();
  if (!why.empty()) throw UnsupportedError("bench layer: " + why);
}

}  // namespace

void build_bench_layer(Decoder& m, int64_t index, BenchLayerKind kind, uint64_t seed, const BenchBuildOptions& o,
                       const PlainLayerWeights* weights) {
  const ModelConfig& c = m.config();
  const at::Device dev = m.device();
  check_packed_device(kind, dev);
  if (index < 0 || index >= c.num_layers) throw ShapeError("bench layer: layer " + std::to_string(index) + " out of range");
  const std::vector<SiteSpec> specs = bench_layer_site_specs(c);
  const int64_t hd = c.head_dim, r_h = bench_layer_r_h(c);
  const at::ScalarType dtype = m.dtype();
  DecoderLayer& L = m.layers()[static_cast<size_t>(index)];
  L = DecoderLayer{};

  // Transforms first (a separate stream from the weights, so every kind gets the same weights).
  // U_C: random orthogonal [hd, hd]; U_D: the online Hadamard of size ffn (a random orthogonal block
  // when ffn is not constructible, e.g. 14336 = 7 * 2048).
  Rng rot_rng = Rng::derive(seed, "bench_layer", {index});
  const MatrixXdR uc = random_orthogonal(hd, rot_rng);
  const auto hadamard = std::make_shared<const OnlineHadamard>(make_online_hadamard(c.intermediate_size, rot_rng, true));
  if (kind != BenchLayerKind::kBf16) {
    at::Tensor u = at::from_blob(const_cast<double*>(uc.data()), {hd, hd}, at::TensorOptions().dtype(at::kDouble));
    L.qk_transform = std::make_shared<MatrixTransform>(u.clone().to(dev, dtype));
  }

  // [N, K] float32 on the draw device (or where the caller's weights are).
  const PlainLayerWeights w = weights ? *weights : draw_bench_layer_weights(c, seed, index, o.draw_device);
  L.input_norm_weight = w.input_norm.to(dev, dtype);
  L.post_attention_norm_weight = w.post_attention_norm.to(dev, dtype);
  const at::Tensor* ws[] = {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down};
  std::shared_ptr<Linear>* slots[] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
  for (size_t i = 0; i < specs.size(); ++i) {
    const SiteSpec& s = specs[i];
    const at::Tensor& wi = *ws[i];
    if (kind == BenchLayerKind::kBf16) {
      *slots[i] = std::make_shared<DenseLinear>(wi.to(dev, dtype), at::Tensor());
      continue;
    }
    const QuantizedWeight qw = rtn_quantize_weight(wi.to(at::kFloat), site_weight_high_mask(s), s.weight_bits_low, s.weight_bits_high, 1.0, false);
    const bool down = s.kind == SiteKind::kDown;
    if (kind == BenchLayerKind::kResqDequantized) {
      *slots[i] = std::make_shared<DenseLinear>(qw.dequant.to(dev, dtype), at::Tensor());
      if (down) L.down_input_transform = std::make_shared<OnlineHadamardTransform>(*hadamard);
      continue;
    }
    // The path of load_packed_model: PackedCudaLinear (PackedCpuLinear on cpu), U_D fused into
    // down_proj's quantizer.
    bool fused = false;
    *slots[i] = build_site_linear(packed_site_data(s, qw), ExecutionMode::kPacked, dtype, dev,
                                  down ? hadamard : nullptr, &fused);
    if (down && !fused) L.down_input_transform = std::make_shared<OnlineHadamardTransform>(*hadamard);
  }
  if (kind == BenchLayerKind::kResqPacked) {
    L.k_cache_transform = make_packed_kv_cache_quant(hd, r_h, 1.0f, dev);
    L.v_cache_transform = make_packed_kv_cache_quant(hd, r_h, 1.0f, dev);
  }
}

Decoder make_bench_layer(const ModelConfig& config, BenchLayerKind kind, uint64_t seed, const std::string& device,
                         const BenchBuildOptions& o, const PlainLayerWeights* weights) {
  const at::Device dev(device);
  check_packed_device(kind, dev);
  ModelConfig c = config;
  c.num_layers = 1;
  (void)bench_layer_site_specs(c);  // shape errors before any allocation
  Decoder m(c, parse_compute_dtype(o.dtype), dev);
  build_bench_layer(m, 0, kind, seed, o, weights);
  return m;
}

namespace {

// Times are taken on stream 0 (cuda_stream0_median_us), without an L2 flush: a layer's working set is
// far larger than L2.
struct LayerTimes {
  double layer_us = 0.0;
  double linears_us = 0.0;
};

// run_layer on x [1, T, d] bf16 cuda, then the seven linears alone on bf16 inputs [1, T, K] of their
// shapes (down_proj's fused Hadamard included for resq). The layer runs the MLP in row blocks
// (decoder.cpp), so the linears' sum at M = T approximates their share of the layer.
LayerTimes time_layer(const Decoder& m, const at::Tensor& x, const LayerBenchOptions& o) {
  const RopeTables rope = m.rope_tables(x.size(1));
  LayerTimes r;
  r.layer_us = cuda_stream0_median_us(o.warmup, o.repeats, [&] { (void)m.run_layer(0, x, rope); });
  const DecoderLayer& L = m.layers()[0];
  for (const auto* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
    const at::Tensor xi = at::randn({1, x.size(1), (*lin)->in_features()}, x.options());
    r.linears_us += cuda_stream0_median_us(o.warmup, o.repeats, [&] { (void)(*lin)->forward(xi); });
  }
  return r;
}

}  // namespace

nlohmann::json run_layer_prefill_bench(const LayerBenchOptions& o, void (*on_row)(const nlohmann::json& row)) {
  const std::string why = packed_cuda_unavailable_reason();
  if (!why.empty()) {
    throw UsageError("resq bench --layer: " + why + "; no CUDA device can be used; use --cpu for the CPU benchmark");
  }
  if (o.seqlen < 1) throw UsageError("resq bench: --layer-seqlen must be >= 1");
  c10::NoGradGuard no_grad;
  const int dev = cuda_device_index(at::Device(at::kCUDA));  // the current device
  const CudaDeviceFacts facts = cuda_device_facts(dev);
  nlohmann::json result = {{"device", facts.name},
                           {"sm", facts.sm()},
                           {"seqlen", o.seqlen},
                           {"warmup", o.warmup},
                           {"repeats", o.repeats},
                           {"libtorch", PlainTorchLayer::torch_version()},
                           {"plain_attention", PlainTorchLayer::attention_path()},
                           {"build_type", RESQ_BUILD_TYPE},
                           {"layer_prefill", nlohmann::json::array()}};
  const std::vector<std::string> models = o.models.empty() ? std::vector<std::string>{"llama-3-8b"} : o.models;
  const std::string device = "cuda:" + std::to_string(dev);
  const at::Device cuda(device);
  for (const std::string& name : models) {
    const ModelConfig c = synthetic_shape_config(name);  // UsageError for an unknown name
    auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 1);
    // Hidden states [1, T, d] ~ N(0, 1) in bf16 on the device.
    const at::Tensor x =
        at::randn({1, o.seqlen, c.hidden_size}, gen, at::TensorOptions().dtype(at::kFloat)).to(cuda, at::kBFloat16);
    // One draw of layer 0's weights (float32, CPU) for all three layers.
    const PlainLayerWeights w = draw_bench_layer_weights(c, o.seed, 0, "cpu");
    double plain_us = 0.0;
    {
      const PlainTorchLayer plain(c, to_device(w, at::kBFloat16, cuda));
      plain_us = cuda_stream0_median_us(o.warmup, o.repeats, [&] { (void)plain.forward(x); });
    }
    LayerTimes bf16, resq;
    {
      const Decoder m = make_bench_layer(c, BenchLayerKind::kBf16, o.seed, device, {}, &w);
      bf16 = time_layer(m, x, o);
    }
    {
      const Decoder m = make_bench_layer(c, BenchLayerKind::kResqPacked, o.seed, device, {}, &w);
      resq = time_layer(m, x, o);
    }
    nlohmann::json row = {{"model", name},
                          {"seqlen", o.seqlen},
                          {"plain_us", plain_us},
                          {"bf16_us", bf16.layer_us},
                          {"resq_us", resq.layer_us},
                          {"bf16_vs_plain", plain_us / bf16.layer_us},
                          {"packed_vs_plain", plain_us / resq.layer_us},
                          {"speedup", bf16.layer_us / resq.layer_us},
                          {"bf16_linears_us", bf16.linears_us},
                          {"resq_linears_us", resq.linears_us},
                          {"libtorch", PlainTorchLayer::torch_version()},
                          {"plain_attention", PlainTorchLayer::attention_path()}};
    result["layer_prefill"].push_back(row);
    if (on_row) on_row(row);
  }
  return result;
}

}  // namespace resq
