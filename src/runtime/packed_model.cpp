// The CPU integer runtime of a packed checkpoint (PackedCpuLinear, PackedKvCacheQuant) and the
// loaders that build a Decoder from a checkpoint in packed or simulated mode.
#include "resq/runtime/packed_model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "cpu/gemm.h"
#include "resq/common/error.h"
#include "resq/runtime/backend.h"
#include "resq/transforms/fake_quant.h"
#include "resq/transforms/online.h"

namespace resq {

using format::LinearStorage;
using format::SiteKind;
using format::SiteSpec;

ExecutionMode parse_execution_mode(const std::string& name) {
  if (name == "packed") return ExecutionMode::kPacked;
  if (name == "simulate") return ExecutionMode::kSimulate;
  throw UsageError("--mode: expected packed or simulate, got '" + name + "'");
}

const char* execution_mode_name(ExecutionMode mode) {
  switch (mode) {
    case ExecutionMode::kPacked: return "packed";
    case ExecutionMode::kSimulate: return "simulate";
    case ExecutionMode::kSimulateWeights: return "simulate-weights";
  }
  return "?";
}

// ------------------------------------------------------------------ PackedCpuLinear

PackedCpuLinear::PackedCpuLinear(format::PackedLinear packed, std::vector<int32_t> perm, float clip,
                                 std::shared_ptr<const OnlineHadamard> input_hadamard)
    : packed_(std::move(packed)), perm_(std::move(perm)), clip_(clip), hadamard_(std::move(input_hadamard)) {
  const int64_t K = packed_.dims.K();
  if (!perm_.empty() && static_cast<int64_t>(perm_.size()) != K) {
    throw ShapeError("PackedCpuLinear: perm has " + std::to_string(perm_.size()) + " entries, expected K = " + std::to_string(K));
  }
  for (int32_t p : perm_) {
    if (p < 0 || p >= K) throw ShapeError("PackedCpuLinear: perm entry " + std::to_string(p) + " outside [0, K)");
  }
  if (hadamard_ && hadamard_->n != K) {
    throw ShapeError("PackedCpuLinear: online Hadamard of size " + std::to_string(hadamard_->n) + " for K = " + std::to_string(K));
  }
}

cpu::QuantizedActivations PackedCpuLinear::quantize_input(const float* x, int64_t M) const {
  const int64_t K = packed_.dims.K(), K4 = packed_.dims.K4, K8 = packed_.dims.K8;
  if (perm_.empty() && !hadamard_) return cpu::quantize_activations(x, M, K4, K8, clip_, clip_);
  cpu::QuantizedActivations q;
  q.M = M;
  q.K4 = K4;
  q.K8 = K8;
  const int64_t rb = format::packed4_row_bytes(K4);
  q.xq4.resize(static_cast<size_t>(M * rb));
  q.xq8.resize(static_cast<size_t>(M * K8));
  q.sx4.resize(static_cast<size_t>(M));
  q.zx4.resize(static_cast<size_t>(M));
  q.sx8.resize(static_cast<size_t>(M));
  q.zx8.resize(static_cast<size_t>(M));
  // Blocks of tokens: Hadamard and gather in a small buffer that stays in cache, then quantize it
  // (one pass over the activations instead of a transformed full copy).
  constexpr int64_t kBlock = 16;
  const int64_t blocks = (M + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> buf(static_cast<size_t>(kBlock * K)), gathered;
    if (!perm_.empty()) gathered.resize(static_cast<size_t>(kBlock * K));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t m0 = b * kBlock, rows = std::min(kBlock, M - m0);
      std::memcpy(buf.data(), x + m0 * K, sizeof(float) * static_cast<size_t>(rows * K));
      if (hadamard_) apply_online_hadamard(*hadamard_, buf.data(), rows);
      const float* src = buf.data();
      if (!perm_.empty()) {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < K; ++j) gathered[i * K + j] = buf[i * K + perm_[j]];
        src = gathered.data();
      }
      cpu::quantize_activations(src, rows, K4, K8, clip_, clip_, K4 ? q.xq4.data() + m0 * rb : nullptr,
                                K8 ? q.xq8.data() + m0 * K8 : nullptr, q.sx4.data() + m0, q.zx4.data() + m0,
                                q.sx8.data() + m0, q.zx8.data() + m0);
    }
  });
  return q;
}

at::Tensor PackedCpuLinear::forward(const at::Tensor& x) const {
  // x [..., K] -> y [..., N]
  const int64_t K = packed_.dims.K(), N = packed_.dims.N;
  if (x.dim() < 1 || x.size(-1) != K) {
    throw ShapeError("PackedCpuLinear: input has last dimension " + std::to_string(x.dim() ? x.size(-1) : 0) + ", expected " +
                     std::to_string(K));
  }
  if (!x.device().is_cpu()) throw UnsupportedError("PackedCpuLinear: the CPU integer runtime needs CPU tensors");
  at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t M = xf.numel() / std::max<int64_t>(K, 1);
  const cpu::QuantizedActivations q = quantize_input(xf.data_ptr<float>(), M);
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor y = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  cpu::gemm_w4a4_w8a8(q.view(), packed_.view(), y.data_ptr<float>());
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

// ------------------------------------------------------------------ PackedKvCacheQuant

PackedKvCacheQuant::PackedKvCacheQuant(int64_t head_dim, int64_t r_h, float clip) : head_dim_(head_dim), r_h_(r_h), clip_(clip) {
  if (head_dim <= 0 || r_h < 0 || r_h > head_dim) throw ShapeError("PackedKvCacheQuant: need 0 <= r_h <= head_dim");
}

cpu::QuantizedActivations PackedKvCacheQuant::pack(const float* x, int64_t rows) const {
  return cpu::quantize_activations(x, rows, head_dim_ - r_h_, r_h_, clip_, clip_);
}

void PackedKvCacheQuant::unpack(const cpu::QuantizedActivations& q, float* out) const {
  const int64_t K4 = q.K4, K8 = q.K8, K = K4 + K8, rb = format::packed4_row_bytes(K4);
  at::parallel_for(0, q.M, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* o = out + r * K;
      // x̂ = s * (q - z), the formula of KvFakeQuant / fake_quant_per_token.
      for (int64_t k = 0; k < K4; ++k) {
        o[k] = format::dequantize_activation_value(format::uint4_get(q.xq4.data() + r * rb, k), q.sx4[r], q.zx4[r]);
      }
      for (int64_t k = 0; k < K8; ++k) {
        o[K4 + k] = format::dequantize_activation_value(q.xq8[r * K8 + k], q.sx8[r], q.zx8[r]);
      }
    }
  });
}

at::Tensor PackedKvCacheQuant::apply(const at::Tensor& x) const {
  // x [B, Hkv, T, hd] -> the cache's dequantized view, same shape and dtype.
  if (x.size(-1) != head_dim_) throw ShapeError("PackedKvCacheQuant: last dimension " + std::to_string(x.size(-1)) + " != head_dim");
  at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t rows = xf.numel() / head_dim_;
  const cpu::QuantizedActivations cache = pack(xf.data_ptr<float>(), rows);
  at::Tensor out = at::empty_like(xf);
  unpack(cache, out.data_ptr<float>());
  return out.scalar_type() == x.scalar_type() ? out : out.to(x.scalar_type());
}

// ------------------------------------------------------------------ loaders

namespace {

at::Tensor to_tensor(const std::vector<float>& v, std::vector<int64_t> shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::TensorOptions().dtype(at::kFloat)).clone();
}

// Why a site cannot run on the integer kernels (empty = it can).
std::string integer_kernel_blocker(const SiteSpec& s) {
  const auto& a = s.activations;
  if (!a.enabled) return "";  // weight-only: dequantized at load, fp activations
  if (s.storage != LinearStorage::kPacked) return "its weights are not stored packed";
  if (a.high_count != s.high_count) return "its activation split differs from its weight split";
  if (s.K4() > 0 && a.bits_low != format::kBits4) return "its low activation part is " + std::to_string(a.bits_low) + "-bit (the kernels quantize to 4)";
  if (s.K8() > 0 && a.bits_high != format::kBits8) return "its high activation part is " + std::to_string(a.bits_high) + "-bit (the kernels quantize to 8)";
  return "";
}

}  // namespace

std::shared_ptr<Linear> build_site_linear(format::LinearData d, ExecutionMode mode, at::ScalarType dtype, at::Device device,
                                          const std::shared_ptr<const OnlineHadamard>& fused_hadamard, bool* fused) {
  const SiteSpec& s = d.spec;
  *fused = false;
  const bool int_path = mode == ExecutionMode::kPacked && s.activations.enabled;
  if (int_path) {
    // The reader's PackedLinear (row sums included) goes to the backend as it is.
    *fused = static_cast<bool>(fused_hadamard);
    std::vector<int32_t> perm = s.permuted() ? std::move(d.perm) : std::vector<int32_t>{};
    const float clip = static_cast<float>(s.activations.clip_ratio);
    return make_packed_linear(std::move(d.packed), std::move(perm), clip, fused_hadamard, device);
  }
  const std::vector<float>& b = d.bias();
  at::Tensor bias = b.empty() ? at::Tensor() : to_tensor(b, {s.N}).to(device, dtype);
  auto dense = std::make_shared<DenseLinear>(to_tensor(d.dequantized(), {s.N, s.K}).to(device, dtype), bias);
  if (!s.activations.enabled || mode == ExecutionMode::kSimulateWeights) return dense;
  auto quant = std::make_shared<ActivationFakeQuant>(site_activation_high_mask(s), s.activations.bits_low,
                                                     s.activations.bits_high, s.activations.clip_ratio);
  return std::make_shared<SimulatedLinear>(dense, quant);
}

Decoder load_packed_model(const format::PackedCheckpoint& ck, const LoadOptions& options, ExecutionMode mode) {
  const format::CheckpointMeta& meta = ck.meta();
  const ModelConfig& c = meta.model;
  const at::ScalarType dtype = parse_compute_dtype(options.dtype);
  const at::Device device(options.device);
  if (mode == ExecutionMode::kPacked) {
    if (device.is_cuda()) {
      const std::string why = packed_cuda_unavailable_reason();
      if (!why.empty()) {
        throw UnsupportedError("--mode packed --device cuda: " + why + "; use --device cpu, or --mode simulate on " + options.device);
      }
      if (dtype != at::kFloat && dtype != at::kBFloat16) {
        throw UnsupportedError("--mode packed --device cuda: the GPU quantizer reads float32 or bfloat16, not --dtype " + options.dtype);
      }
    } else if (!device.is_cpu()) {
      throw UnsupportedError("--mode packed runs on the CPU or CUDA integer kernels; use --device cpu or cuda, or --mode simulate on " +
                             options.device);
    }
    for (const auto& [kind, s] : meta.sites) {
      const std::string why = integer_kernel_blocker(s);
      if (!why.empty()) {
        throw UnsupportedError(ck.dir() + ": " + format::site_name(kind) + " cannot run on the integer kernels: " + why +
                               "; evaluate it with --mode simulate");
      }
    }
    if (meta.kv.enabled && ((c.head_dim - meta.r_h > 0 && meta.kv.bits_low != format::kBits4) ||
                            (meta.r_h > 0 && meta.kv.bits_high != format::kBits8))) {
      throw UnsupportedError(ck.dir() + ": the KV cache bits " + std::to_string(meta.kv.bits_low) + "/" + std::to_string(meta.kv.bits_high) +
                             " do not fit the packed 4/8 cache; evaluate it with --mode simulate");
    }
  }
  Decoder m(c, dtype, device);
  auto global = [&](const std::string& name, std::vector<int64_t> shape) {
    return to_tensor(ck.float_tensor(name), std::move(shape)).to(device, dtype);
  };
  m.embed_weight = global(format::kEmbedTokensTensor, {c.vocab_size, c.hidden_size});
  m.final_norm_weight = global(format::kFinalNormTensor, {c.hidden_size});
  m.lm_head = std::make_shared<DenseLinear>(global(format::kLmHeadTensor, {c.vocab_size, c.hidden_size}), at::Tensor());

  std::shared_ptr<const OnlineHadamard> hadamard;
  if (meta.online.down_hadamard) {
    OnlineHadamard t;
    t.n = meta.online.hadamard_n;
    t.pow2 = meta.online.hadamard_pow2;
    t.block = meta.online.hadamard_block;
    t.construction = meta.online.hadamard_construction;
    const auto signs = ck.float_tensor(format::kDownHadamardSignsTensor);
    t.signs.assign(signs.begin(), signs.end());
    t.block_matrix = ck.double_tensor(format::kDownHadamardBlockTensor);
    hadamard = std::make_shared<const OnlineHadamard>(std::move(t));
  }
  const std::shared_ptr<TensorTransform> hadamard_transform =
      hadamard ? std::make_shared<OnlineHadamardTransform>(*hadamard) : nullptr;

  for (int64_t l = 0; l < c.num_layers; ++l) {
    DecoderLayer& L = m.layers()[l];
    L.input_norm_weight = global(format::input_norm_tensor(l), {c.hidden_size});
    L.post_attention_norm_weight = global(format::post_attention_norm_tensor(l), {c.hidden_size});
    if (meta.online.qk_rotation) {
      L.qk_transform = std::make_shared<MatrixTransform>(global(format::qk_rotation_tensor(l), format::qk_rotation_shape(meta)));
    }
    std::shared_ptr<Linear>* slots[] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
    bool down_fused = false;
    for (int i = 0; i < format::kNumSites; ++i) {
      const SiteKind kind = format::kAllSites[i];
      bool fused = false;
      *slots[i] = build_site_linear(ck.linear(l, kind), mode, dtype, device, kind == SiteKind::kDown ? hadamard : nullptr, &fused);
      if (kind == SiteKind::kDown) down_fused = fused;
    }
    // U_D: fused into the down_proj activation quantizer on the integer path, else a transform.
    L.down_input_transform = down_fused ? nullptr : hadamard_transform;
    if (meta.kv.enabled && mode != ExecutionMode::kSimulateWeights) {
      if (mode == ExecutionMode::kPacked) {
        L.k_cache_transform = make_packed_kv_cache_quant(c.head_dim, meta.r_h, static_cast<float>(meta.kv.k_clip_ratio), device);
        L.v_cache_transform = make_packed_kv_cache_quant(c.head_dim, meta.r_h, static_cast<float>(meta.kv.v_clip_ratio), device);
      } else {
        L.k_cache_transform = std::make_shared<KvFakeQuant>(c.head_dim, meta.r_h, meta.kv.bits_low, meta.kv.bits_high, meta.kv.k_clip_ratio);
        L.v_cache_transform = std::make_shared<KvFakeQuant>(c.head_dim, meta.r_h, meta.kv.bits_low, meta.kv.bits_high, meta.kv.v_clip_ratio);
      }
    }
  }
  return m;
}

bool is_quantized_model_dir(const std::string& dir) { return format::PackedCheckpoint::is_checkpoint_dir(dir); }

Decoder load_model_for_eval(const std::string& dir, const LoadOptions& options, std::optional<ExecutionMode> mode) {
  if (!is_quantized_model_dir(dir)) {
    if (mode) throw UsageError("--mode: '" + dir + "' is not a resq packed checkpoint (no resq_config.json); --mode applies only to those");
    return Decoder::load(dir, options);
  }
  const format::PackedCheckpoint ck = format::PackedCheckpoint::open(dir);
  return load_packed_model(ck, options, mode.value_or(ExecutionMode::kPacked));
}

}  // namespace resq
