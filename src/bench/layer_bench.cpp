// Decoder-layer prefill benchmark of `resq bench` (layer_bench.h): a bf16 layer vs the resq packed
// layer built from the same random weights, timed with CUDA events around Decoder::run_layer.
#include "resq/bench/layer_bench.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <functional>
#include <memory>

#include "resq/common/error.h"
#include "resq/format/packed.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/synthetic.h"
#include "resq/quant/quantizers.h"
#include "resq/runtime/packed_model.h"
#include "resq/runtime/transforms.h"

#if defined(RESQ_HAVE_CUDA)
#include <cuda_runtime.h>

#include "resq/cuda/check.h"
#include "resq/runtime/packed_cuda.h"
#endif

namespace resq {

using format::SiteKind;
using format::SiteSpec;

int64_t bench_layer_r_h(const ModelConfig& c) { return c.head_dim / 8; }

std::vector<SiteSpec> bench_layer_site_specs(const ModelConfig& c) {
  const int64_t d = c.hidden_size, hd = c.head_dim, ffn = c.intermediate_size;
  if (d <= 0 || hd <= 0 || ffn <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0) {
    throw ShapeError("bench layer: the config needs positive hidden_size, head_dim, intermediate_size and heads");
  }
  if (d % 8 != 0 || hd % 8 != 0) {
    throw ShapeError("bench layer: hidden_size " + std::to_string(d) + " and head_dim " + std::to_string(hd) +
                     " must be multiples of 8 (1/8 of the columns are 8-bit)");
  }
  auto site = [](SiteKind kind, int64_t N, int64_t K, const char* rule, int64_t group, int64_t high) {
    SiteSpec s;
    s.kind = kind;
    s.N = N;
    s.K = K;
    s.high_rule = rule;
    s.high_group = group;
    s.high_count = high;
    s.has_bias = false;
    s.storage = format::LinearStorage::kPacked;
    s.weight_bits_low = 4;
    s.weight_bits_high = 8;
    s.activations.enabled = true;
    s.activations.bits_low = 4;
    s.activations.bits_high = 8;
    s.activations.clip_ratio = 1.0;
    s.activations.high_count = high;
    return s;
  };
  return {site(SiteKind::kQ, c.q_size(), d, "last", 0, d / 8),
          site(SiteKind::kK, c.kv_size(), d, "last", 0, d / 8),
          site(SiteKind::kV, c.kv_size(), d, "last", 0, d / 8),
          site(SiteKind::kO, d, c.q_size(), "per_head", hd, bench_layer_r_h(c)),
          site(SiteKind::kGate, ffn, d, "last", 0, d / 8),
          site(SiteKind::kUp, ffn, d, "last", 0, d / 8),
          site(SiteKind::kDown, d, ffn, "last", 0, 0)};
}

namespace {

// RTN-quantized w [N, K] (float32, CPU) -> the LinearData a checkpoint reader would return for spec
// (q reordered to spec.packed_column_order(), split at K4 and packed like CheckpointWriter does).
format::LinearData packed_site_data(const SiteSpec& s, const QuantizedWeight& qw) {
  format::LinearData d;
  d.spec = s;
  d.dims = {s.N, s.K4(), s.K8()};
  d.perm = s.packed_column_order();
  const at::Tensor perm = at::from_blob(d.perm.data(), {s.K}, at::TensorOptions().dtype(at::kInt)).to(at::kLong);
  const at::Tensor q = qw.q.index_select(1, perm).contiguous();  // [N, K] int8, packed order
  d.w4.resize(static_cast<size_t>(s.N * format::packed4_row_bytes(s.K4())));
  d.w8.resize(static_cast<size_t>(s.N * s.K8()));
  format::pack_weights_reference(q.data_ptr<int8_t>(), s.N, s.K4(), s.K8(), d.w4.data(), d.w8.data());
  const at::Tensor s4 = qw.scale_low.contiguous(), s8 = qw.scale_high.contiguous();
  d.scale4.assign(s4.data_ptr<float>(), s4.data_ptr<float>() + s.N);
  d.scale8.assign(s8.data_ptr<float>(), s8.data_ptr<float>() + s.N);
  return d;
}

}  // namespace

Decoder make_bench_layer(const ModelConfig& config, BenchLayerKind kind, uint64_t seed, const std::string& device) {
  const at::Device dev(device);
  if (kind == BenchLayerKind::kResqPacked && !dev.is_cpu()) {
#if defined(RESQ_HAVE_CUDA)
    if (!dev.is_cuda()) throw UnsupportedError("bench layer: the packed layer runs on cuda or cpu, not " + device);
    const std::string why = packed_cuda_unavailable_reason();
    if (!why.empty()) throw UnsupportedError("bench layer: " + why);
#else
    throw UnsupportedError("bench layer: this resq binary was built without CUDA (RESQ_WITH_CUDA=OFF or no nvcc)");
#endif
  }
  ModelConfig c = config;
  c.num_layers = 1;
  const std::vector<SiteSpec> specs = bench_layer_site_specs(c);
  const int64_t d = c.hidden_size, hd = c.head_dim;
  const at::ScalarType dtype = at::kBFloat16;
  Decoder m(c, dtype, dev);
  DecoderLayer& L = m.layers()[0];
  L.input_norm_weight = at::ones({d}, at::TensorOptions().dtype(dtype).device(dev));
  L.post_attention_norm_weight = at::ones({d}, at::TensorOptions().dtype(dtype).device(dev));

  // Transforms first, so that every kind draws the same weights below. U_C: random orthogonal
  // [hd, hd]; U_D: the online Hadamard of size ffn (a random orthogonal block when ffn is not
  // constructible, e.g. 14336 = 7 * 2048).
  Rng rot_rng = Rng::derive(seed, "bench_layer", {0});
  const MatrixXdR uc = random_orthogonal(hd, rot_rng);
  const auto hadamard = std::make_shared<const OnlineHadamard>(make_online_hadamard(c.intermediate_size, rot_rng, true));
  if (kind != BenchLayerKind::kBf16) {
    at::Tensor u = at::from_blob(const_cast<double*>(uc.data()), {hd, hd}, at::TensorOptions().dtype(at::kDouble));
    L.qk_transform = std::make_shared<MatrixTransform>(u.clone().to(dev, dtype));
  }

  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::shared_ptr<Linear>* slots[] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
  for (size_t i = 0; i < specs.size(); ++i) {
    const SiteSpec& s = specs[i];
    const at::Tensor w = at::randn({s.N, s.K}, gen, at::TensorOptions().dtype(at::kFloat)).mul_(0.02);  // [N, K]
    if (kind == BenchLayerKind::kBf16) {
      *slots[i] = std::make_shared<DenseLinear>(w.to(dev, dtype), at::Tensor());
      continue;
    }
    const at::Tensor mask = s.high_rule == "per_head" ? high_mask_per_head(s.K / hd, hd, s.high_count)
                                                      : high_mask_last(s.K, s.high_count);
    const QuantizedWeight qw = rtn_quantize_weight(w, mask, s.weight_bits_low, s.weight_bits_high, 1.0, false);
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
  if (kind == BenchLayerKind::kResqPacked && dev.is_cpu()) {
    L.k_cache_transform = std::make_shared<PackedKvCacheQuant>(hd, bench_layer_r_h(c), 1.0f);
    L.v_cache_transform = std::make_shared<PackedKvCacheQuant>(hd, bench_layer_r_h(c), 1.0f);
  }
#if defined(RESQ_HAVE_CUDA)
  if (kind == BenchLayerKind::kResqPacked && dev.is_cuda()) {
    L.k_cache_transform = std::make_shared<PackedCudaKvCacheQuant>(hd, bench_layer_r_h(c), 1.0f);
    L.v_cache_transform = std::make_shared<PackedCudaKvCacheQuant>(hd, bench_layer_r_h(c), 1.0f);
  }
#endif
  return m;
}

#if defined(RESQ_HAVE_CUDA)

namespace {

// fn() timed on stream 0: torch's default current stream, where both the torch ops and the packed
// kernels run (see packed_cuda.h). No L2 flush: a layer's working set is far larger than L2.
double time_stream0_us(int warmup, int repeats, const std::function<void()>& fn) {
  return gpu::median_event_time_us(warmup, repeats, nullptr, 0, fn);
}

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
  r.layer_us = time_stream0_us(o.warmup, o.repeats, [&] { (void)m.run_layer(0, x, rope); });
  const DecoderLayer& L = m.layers()[0];
  for (const auto* lin : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) {
    const at::Tensor xi = at::randn({1, x.size(1), (*lin)->in_features()}, x.options());
    r.linears_us += time_stream0_us(o.warmup, o.repeats, [&] { (void)(*lin)->forward(xi); });
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
  int dev = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  RESQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  nlohmann::json result = {{"device", std::string(prop.name)},
                           {"sm", "sm_" + std::to_string(prop.major) + std::to_string(prop.minor)},
                           {"seqlen", o.seqlen},
                           {"warmup", o.warmup},
                           {"repeats", o.repeats},
                           {"layer_prefill", nlohmann::json::array()}};
  const std::vector<std::string> models = o.models.empty() ? std::vector<std::string>{"llama-3-8b"} : o.models;
  const std::string device = "cuda:" + std::to_string(dev);
  for (const std::string& name : models) {
    const ModelConfig c = synthetic_shape_config(name);  // UsageError for an unknown name
    auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed + 1);
    // Hidden states [1, T, d] ~ N(0, 1) in bf16 on the device.
    const at::Tensor x = at::randn({1, o.seqlen, c.hidden_size}, gen, at::TensorOptions().dtype(at::kFloat))
                             .to(at::Device(device), at::kBFloat16);
    LayerTimes bf16, resq;
    {
      const Decoder m = make_bench_layer(c, BenchLayerKind::kBf16, o.seed, device);
      bf16 = time_layer(m, x, o);
    }
    {
      const Decoder m = make_bench_layer(c, BenchLayerKind::kResqPacked, o.seed, device);
      resq = time_layer(m, x, o);
    }
    nlohmann::json row = {{"model", name},
                          {"seqlen", o.seqlen},
                          {"bf16_us", bf16.layer_us},
                          {"resq_us", resq.layer_us},
                          {"speedup", bf16.layer_us / resq.layer_us},
                          {"bf16_linears_us", bf16.linears_us},
                          {"resq_linears_us", resq.linears_us}};
    result["layer_prefill"].push_back(row);
    if (on_row) on_row(row);
  }
  return result;
}

#else  // !RESQ_HAVE_CUDA

nlohmann::json run_layer_prefill_bench(const LayerBenchOptions&, void (*)(const nlohmann::json&)) {
  throw UsageError("resq bench: this build has no CUDA kernels, so no CUDA device can be used "
                   "(configure with -DRESQ_WITH_CUDA=ON where nvcc is installed); use --cpu for the "
                   "CPU benchmark");
}

#endif

}  // namespace resq
