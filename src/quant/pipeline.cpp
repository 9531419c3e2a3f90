// The ResQ quantization pipeline: prepare -> calibrate -> PCA/rotations -> fuse -> quantize weights
// (GPTQ/RTN) -> write the packed checkpoint (resq/format/checkpoint.h) -> read it back and report.
#include "resq/quant/pipeline.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <unistd.h>
#include <malloc.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>

#include "resq/common/error.h"
#include "resq/common/log.h"
#include "resq/io/safetensors.h"
#include "resq/linalg/pca.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/format/checkpoint.h"
#include "resq/format/layout.h"
#include "resq/quant/quantizers.h"
#include "resq/runtime/transforms.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace fs = std::filesystem;

namespace {




double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

// Current resident set size in GiB (VmRSS of /proc/self/status; 0 where it cannot be read). Logged
// with every progress line so that the stage that sets the peak is visible.
double current_rss_gib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / (1024.0 * 1024.0);
  }
  return 0.0;
}

// detail: also glibc's heap size, the part of it in use, and mmap()ed blocks (fragmentation shows
// as a heap that grows while its in-use part does not).
std::string memory_note(bool detail = false) {
  std::string note = strprintf("RSS %.2f GiB (peak %.2f)", current_rss_gib(), peak_rss_gib());
  if (detail) {
    const struct mallinfo2 mi = ::mallinfo2();
    note += strprintf(", heap %.2f GiB of which %.2f in use, mmap %.2f", mi.arena / 1073741824.0,
                      mi.uordblks / 1073741824.0, mi.hblkhd / 1073741824.0);
  }
  return note;
}

// End of a layer: hand the heap's free pages back to the OS. Without it the heap's resident size
// only grows (fragmentation: measured +0.15 GiB per layer at 1B scale, ~+0.9 GiB over 16 layers)
// because the pipeline disables glibc's automatic trimming (see quantize_model). Re-faulting the
// pages in the next layer costs ~1 s per layer (3.5 s per GiB on this VM).
void release_free_heap() { ::malloc_trim(0); }

at::Tensor to_tensor(const MatrixXdR& m) {
  return at::from_blob(const_cast<double*>(m.data()), {m.rows(), m.cols()}, at::TensorOptions().dtype(at::kDouble))
      .clone();
}

MatrixXdR to_eigen(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous().cpu();
  MatrixXdR m(c.size(0), c.size(1));
  std::memcpy(m.data(), c.data_ptr<double>(), sizeof(double) * c.numel());
  return m;
}

DenseLinear& dense(const std::shared_ptr<Linear>& linear, const std::string& what) {
  auto* d = dynamic_cast<DenseLinear*>(linear.get());
  if (!d) throw Error(what + ": expected a dense linear at this stage of the pipeline");
  return *d;
}

// Replaces a linear's weight (and bias) keeping the compute dtype; weight/bias given in float64.
void set_dense(std::shared_ptr<Linear>& linear, const at::Tensor& w64, const at::Tensor& b64, at::ScalarType dtype) {
  linear = std::make_shared<DenseLinear>(w64.to(dtype), b64.defined() ? b64.to(dtype) : at::Tensor());
}

at::Tensor weight64(const std::shared_ptr<Linear>& l, const std::string& what) { return dense(l, what).weight().to(at::kDouble); }
at::Tensor bias64(const std::shared_ptr<Linear>& l, const std::string& what) {
  const at::Tensor& b = dense(l, what).bias();
  return b.defined() ? b.to(at::kDouble) : at::Tensor();
}

// ---------------------------------------------------------------------------- prepare

// Untie lm_head and fold the final RMSNorm weight into it (norm weight := 1); optionally subtract
// each embedding row's mean (QuaRot/official ResQ; changes the function for RMSNorm models).
// Elementwise products are done in the compute dtype: one correctly rounded multiply either way.
void prepare_globals(Decoder& m, const Recipe& recipe) {
  // [V, d]. Tied embeddings share one tensor: a copy unties them; an untied lm_head is scaled in
  // place (no second [V, d] buffer: 0.5 GiB in bf16 for a 128k vocabulary at d = 2048).
  at::Tensor lm = dense(m.lm_head, "lm_head").weight();
  if (lm.is_alias_of(m.embed_weight)) lm = lm.clone();
  // In row chunks: a bf16 [V, d] times the float32 norm weight would otherwise materialize a float32
  // [V, d] temporary (1 GiB at 1B scale). Same result: one correctly rounded product per element.
  const at::Tensor norm = m.final_norm_weight.unsqueeze(0);
  for (int64_t r0 = 0; r0 < lm.size(0); r0 += 4096) lm.narrow(0, r0, std::min<int64_t>(4096, lm.size(0) - r0)).mul_(norm);
  m.lm_head = std::make_shared<DenseLinear>(lm, at::Tensor());
  m.final_norm_weight = at::ones_like(m.final_norm_weight);
  if (recipe.rotation.center_embeddings) {
    m.embed_weight = (m.embed_weight - m.embed_weight.to(at::kDouble).mean(-1, true).to(m.dtype())).contiguous();
  }
}

// Folds a layer's RMSNorm weights into the linears that read them (q/k/v; gate/up), norms := 1.
void prepare_layer(DecoderLayer& L, at::ScalarType dt) {
  const at::Tensor in_norm = L.input_norm_weight.unsqueeze(0);
  const at::Tensor post_norm = L.post_attention_norm_weight.unsqueeze(0);
  for (auto* lin : {&L.q, &L.k, &L.v}) {
    *lin = std::make_shared<DenseLinear>(dense(*lin, "qkv").weight() * in_norm, dense(*lin, "qkv").bias());
  }
  for (auto* lin : {&L.gate, &L.up}) {
    *lin = std::make_shared<DenseLinear>(dense(*lin, "mlp").weight() * post_norm, dense(*lin, "mlp").bias());
  }
  L.input_norm_weight = at::ones_like(L.input_norm_weight);
  L.post_attention_norm_weight = at::ones_like(L.post_attention_norm_weight);
}

// ---------------------------------------------------------------------------- calibration

// Uncentered second moments XᵀX [F, F] in float64 from inputs x2 [n, F], added call by call.
// bf16 = true: the products are those of the bf16-rounded inputs (exactly what a bf16-product
// linear multiplies, see Decoder::set_matmul_dtype), summed by oneDNN in a float32 buffer over up to
// kFlushRows rows and then added into the float64 accumulator (~10x faster than float64 GEMMs; the
// float32 partial sums over <= 16k rows lose nothing that matters next to float64 accumulation).
// bf16 = false: one float64 GEMM per call (the reference path). Buffers are kept across reset() so
// that a new layer does not page-fault 768 MiB of fresh memory for an 8192-wide down_proj.
class GramAccumulator {
 public:
  static constexpr int64_t kFlushRows = 16384;
  GramAccumulator(int64_t F, bool bf16) : bf16_(bf16), acc_(at::zeros({F, F}, at::kDouble)) {}
  void add(const at::Tensor& x2) {
    if (!bf16_) {
      at::Tensor xd = x2.to(at::kDouble).cpu();
      acc_.addmm_(xd.t(), xd);
      return;
    }
    const int64_t F = acc_.size(0);
    if (!partial_.defined()) partial_ = at::empty({F, F}, at::TensorOptions().dtype(at::kFloat));
    gram_bf16(x2.to(at::kBFloat16).contiguous(), partial_, pending_ == 0 ? 0.0f : 1.0f);
    pending_ += x2.size(0);
    if (pending_ >= kFlushRows) flush();
  }
  // The float64 sum of everything added since the last reset().
  const at::Tensor& result() {
    flush();
    return acc_;
  }
  void reset() {
    acc_.zero_();
    pending_ = 0;
  }
  void release_partial() {
    flush();
    partial_ = at::Tensor();
  }

 private:
  // acc += partial elementwise. Not acc_.add_(partial_): type promotion would materialize a float64
  // copy of the float32 partial sums (512 MiB for an 8192-wide down_proj) at every flush.
  void flush() {
    if (pending_ > 0) {
      double* acc = acc_.data_ptr<double>();
      const float* part = partial_.data_ptr<float>();
      at::parallel_for(0, acc_.numel(), int64_t{1} << 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) acc[i] += static_cast<double>(part[i]);
      });
    }
    pending_ = 0;
  }
  bool bf16_;
  at::Tensor acc_;      // [F, F] float64
  at::Tensor partial_;  // [F, F] float32 (bf16 only)
  int64_t pending_ = 0;
};

class CovarianceObserver : public ForwardObserver {
 public:
  CovarianceObserver(const ModelConfig& c, bool bf16) : c_(c), gram_a_(c.hidden_size, bf16) {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      cov_v.push_back(at::zeros({c.num_kv_heads, c.head_dim, c.head_dim}, at::kDouble));
      cov_k.push_back(at::zeros({c.head_dim, c.head_dim}, at::kDouble));
    }
  }
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override {
    // Attention input and MLP input of every layer -> one shared d x d matrix for U_A.
    if (site.kind != LinearKind::kQ && site.kind != LinearKind::kGate) return;
    gram_a_.add(x.reshape({-1, c_.hidden_size}));
  }
  // K and V covariances are hd x hd (tiny GEMMs): float64 as before.
  void on_keys(int64_t layer, const at::Tensor& k) override {
    at::Tensor k2 = k.reshape({-1, c_.head_dim}).to(at::kDouble).cpu();  // summed over heads
    cov_k[layer].add_(at::mm(k2.t(), k2));
  }
  void on_values(int64_t layer, const at::Tensor& v) override {
    // v [B, Hkv, T, hd] -> per head [Hkv, B*T, hd]
    at::Tensor v3 = v.transpose(0, 1).reshape({c_.num_kv_heads, -1, c_.head_dim}).to(at::kDouble).cpu();
    cov_v[layer].add_(at::bmm(v3.transpose(1, 2), v3));
  }
  // Call once after the calibration pass.
  void finish() {
    cov_a = gram_a_.result();
    gram_a_.release_partial();
  }
  const ModelConfig& c_;
  GramAccumulator gram_a_;
  at::Tensor cov_a;               // [d, d] float64, set by finish()
  std::vector<at::Tensor> cov_v;  // per layer [Hkv, hd, hd]
  std::vector<at::Tensor> cov_k;  // per layer [hd, hd]
};

// Hessians (XᵀX of the inputs, float64) of one layer's linears for GPTQ; one observer serves every
// layer (reset() between layers keeps its buffers).
class HessianObserver : public ForwardObserver {
 public:
  explicit HessianObserver(bool bf16 = false) : bf16_(bf16) {}
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override {
    LinearKind key = site.kind;
    if (key == LinearKind::kK || key == LinearKind::kV) return;  // same input as q
    if (key == LinearKind::kUp) return;                          // same input as gate
    at::Tensor x2 = x.reshape({-1, x.size(-1)});
    auto it = grams_.find(key);
    if (it == grams_.end()) it = grams_.emplace(key, GramAccumulator(x2.size(1), bf16_)).first;
    it->second.add(x2);
  }
  // The layer's Hessians [K, K] float64 (views of the accumulators: valid until reset()). Frees the
  // float32 partial sums first (256 MiB for an 8192-wide down_proj) so GPTQ has that memory.
  std::map<LinearKind, at::Tensor> finish() {
    std::map<LinearKind, at::Tensor> out;
    for (auto& [key, g] : grams_) {
      g.release_partial();
      out[key] = g.result();
    }
    return out;
  }
  void reset() {
    for (auto& [key, g] : grams_) g.reset();
  }

 private:
  bool bf16_;
  std::map<LinearKind, GramAccumulator> grams_;
};

// Runs `fn(layer_index)` between propagating hidden states [N, L, d] through each layer in chunks.
template <typename Fn>
void for_each_layer(Decoder& m, at::Tensor& hidden, const RopeTables& rope, int64_t chunk, ForwardObserver* obs,
                    Fn&& after_layer, const char* stage) {
  const int64_t N = hidden.size(0);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t l = 0; l < m.config().num_layers; ++l) {
    m.load_layer(l);
    prepare_layer(m.layers()[l], m.dtype());
    // Windows are independent, so each chunk's output overwrites its own input in place: one
    // [N, L, d] buffer instead of two (512 MiB at 32 x 2048 x 2048 float32).
    for (int64_t s = 0; s < N; s += chunk) {
      at::Tensor part = hidden.narrow(0, s, std::min(chunk, N - s));
      part.copy_(m.run_layer(l, part, rope, obs));
    }
    after_layer(l);
    m.unload_layer(l);
    release_free_heap();
    const double elapsed = seconds_since(start);
    log::info(strprintf("%s: layer %" PRId64 "/%" PRId64 " | %.0f tok/s | ETA %.0f s | %s", stage, l + 1,
                        m.config().num_layers, (l + 1) * N * hidden.size(1) / std::max(elapsed, 1e-9),
                        elapsed / (l + 1) * (m.config().num_layers - l - 1), memory_note().c_str()));
  }
}

// ---------------------------------------------------------------------------- rotations

struct Rotations {
  at::Tensor u_a;                       // [d, d] or undefined
  std::vector<std::vector<at::Tensor>> u_b;  // [layer][kv head] -> [hd, hd]
  std::vector<at::Tensor> u_c;          // [layer] -> [hd, hd]
  std::optional<OnlineHadamard> u_d;
  nlohmann::json spectra = nlohmann::json::object();
};

Rotations build_rotations(const Decoder& m, const Recipe& recipe, const CovarianceObserver* cov, uint64_t seed,
                          int64_t r, int64_t r_h) {
  const ModelConfig& c = m.config();
  const auto& rot = recipe.rotation;
  Rotations out;
  if (rot.method == "none") return out;
  const bool pca = rot.method == "resq";
  auto basis = [&](const at::Tensor& cov, int64_t rr, Rng rng, double* captured) {
    if (!pca) return to_tensor(randomized_hadamard(cov.size(0), rng));
    const PcaResult p = pca_from_covariance(to_eigen(cov), rot.pca_damping);
    if (captured) *captured = captured_variance_fraction(p, rr);
    return to_tensor(resq_basis(p, rr, rng, /*rotate=*/true));
  };
  double captured_a = 0.0;
  const auto d = c.hidden_size, hd = c.head_dim;
  out.u_a = basis(pca ? cov->cov_a : at::zeros({d, d}, at::kDouble), r, Rng::derive(seed, "U_A"), &captured_a);
  double sum_b = 0, sum_c = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<at::Tensor> heads;
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      double captured = 0;
      heads.push_back(basis(pca ? cov->cov_v[l][h] : at::zeros({hd, hd}, at::kDouble), r_h,
                            Rng::derive(seed, "U_B", {l, h}), &captured));
      sum_b += captured;
    }
    out.u_b.push_back(heads);
    if (rot.qk_rotation) {
      double captured = 0;
      out.u_c.push_back(basis(pca ? cov->cov_k[l] : at::zeros({hd, hd}, at::kDouble), r_h,
                              Rng::derive(seed, "U_C", {l}), &captured));
      sum_c += captured;
    }
  }
  if (rot.online_down_hadamard) {
    Rng rng = Rng::derive(seed, "U_D");
    out.u_d = make_online_hadamard(c.intermediate_size, rng, /*random_signs=*/true);
  }
  if (pca) {
    out.spectra = {{"U_A_captured_variance_top_r", captured_a},
                   {"U_B_captured_variance_top_r_mean", sum_b / (c.num_layers * c.num_kv_heads)},
                   {"U_C_captured_variance_top_r_mean", rot.qk_rotation ? sum_c / c.num_layers : 0.0},
                   {"r", r},
                   {"r_h", r_h}};
  }
  return out;
}

// rows [R, d] (compute dtype, or the stored 16-bit dtype of embed/lm_head) · U [d, d] (float64),
// in row chunks so a [V, d] matrix never needs a full float64 copy (the lm_head of a 128k vocabulary
// would be 2 GiB at 1B scale). The result keeps rows' dtype. 16-bit rows are rotated in float32:
// the product's float32 error (~1e-7) is far below the bf16/f16 rounding of the result, and it is
// 2-3x faster than float64 (~1 TFLOP per 128k x 2048 matrix).
at::Tensor rotate_rows(const at::Tensor& rows, const at::Tensor& u) {
  at::Tensor out = at::empty_like(rows);
  const bool half = rows.scalar_type() == at::kBFloat16 || rows.scalar_type() == at::kHalf;
  const at::ScalarType work = half ? at::kFloat : at::kDouble;
  const at::Tensor uw = u.to(work);
  const int64_t chunk = 8192;
  for (int64_t r0 = 0; r0 < rows.size(0); r0 += chunk) {
    const int64_t n = std::min(chunk, rows.size(0) - r0);
    out.narrow(0, r0, n).copy_(at::mm(rows.narrow(0, r0, n).to(work), uw));
  }
  return out;
}

// Fuses U_A into embed_tokens and the lm_head input.
void fuse_globals(Decoder& m, const Rotations& R) {
  if (!R.u_a.defined()) return;
  m.embed_weight = rotate_rows(m.embed_weight, R.u_a);
  m.lm_head = std::make_shared<DenseLinear>(rotate_rows(dense(m.lm_head, "lm_head").weight(), R.u_a), at::Tensor());
}

// Fuses U_A, U_B and U_D into one layer's weights (exact, float64) and installs the U_C/U_D online
// transforms.
void fuse_layer(Decoder& m, int64_t l, const Rotations& R) {
  if (!R.u_a.defined()) return;
  const ModelConfig& c = m.config();
  const at::ScalarType dt = m.dtype();
  const at::Tensor& ua = R.u_a;
  const int64_t hd = c.head_dim, G = c.num_heads / c.num_kv_heads;
  {
    DecoderLayer& L = m.layers()[l];
    for (auto* lin : {&L.q, &L.k, &L.gate, &L.up}) set_dense(*lin, at::mm(weight64(*lin, "in"), ua), bias64(*lin, "in"), dt);
    // v_proj: input side U_A, output rows of kv head h by U_B[h]ᵀ (bias too).
    at::Tensor wv = at::mm(weight64(L.v, "v_proj"), ua);
    at::Tensor bv = bias64(L.v, "v_proj");
    // o_proj: output side U_Aᵀ, input columns of query head q by U_B[q / G].
    at::Tensor wo = at::mm(ua.t(), weight64(L.o, "o_proj"));
    at::Tensor bo = bias64(L.o, "o_proj");
    if (bo.defined()) bo = at::mv(ua.t(), bo);
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      const at::Tensor& ub = R.u_b[l][h];
      wv.narrow(0, h * hd, hd).copy_(at::mm(ub.t(), wv.narrow(0, h * hd, hd)));
      if (bv.defined()) bv.narrow(0, h * hd, hd).copy_(at::mv(ub.t(), bv.narrow(0, h * hd, hd)));
      for (int64_t g = 0; g < G; ++g) {
        const int64_t q = h * G + g;
        wo.narrow(1, q * hd, hd).copy_(at::mm(wo.narrow(1, q * hd, hd), ub));
      }
    }
    set_dense(L.v, wv, bv, dt);
    set_dense(L.o, wo, bo, dt);
    at::Tensor wd = at::mm(ua.t(), weight64(L.down, "down_proj"));
    at::Tensor bd = bias64(L.down, "down_proj");
    if (bd.defined()) bd = at::mv(ua.t(), bd);
    if (R.u_d) {
      // W_down' = W_down · T: rows of W_down are row vectors in the FFN space.
      wd = wd.contiguous();
      apply_online_hadamard(*R.u_d, wd.data_ptr<double>(), wd.size(0));
      L.down_input_transform = std::make_shared<OnlineHadamardTransform>(*R.u_d);
    }
    set_dense(L.down, wd, bd, dt);
    if (!R.u_c.empty()) L.qk_transform = std::make_shared<MatrixTransform>(R.u_c[l].to(dt));
  }
}

// ---------------------------------------------------------------------------- quantization

// Quantizes one dense linear's weight: installs the dequantized weights (later layers' GPTQ inputs
// propagate through them) and returns the integer result for the checkpoint; *rel_err receives
// ||Ŵ - W|| / ||W||. The returned dequant tensor is dropped (the linear holds it).
// hessian_last_use: the Hessian buffer may serve as GPTQ's factorization workspace (see
// gptq_quantize_weight) because no later linear reads it.
QuantizedWeight quantize_linear(std::shared_ptr<Linear>& lin, const at::Tensor& mask, const WeightRecipe& w,
                                const at::Tensor& hessian, bool hessian_last_use, at::ScalarType dt, double* rel_err) {
  DenseLinear& d = dense(lin, "quantize");
  at::Tensor original = d.weight().to(at::kFloat);
  QuantizedWeight q = w.method == "gptq"
                          ? gptq_quantize_weight(original, hessian, mask, w.bits_low, w.bits_high, w.percdamp,
                                                 w.blocksize, w.clip_ratio, w.mse_clip, hessian_last_use)
                          : rtn_quantize_weight(original, mask, w.bits_low, w.bits_high, w.clip_ratio, w.mse_clip);
  *rel_err = (q.dequant - original).norm().item<double>() / std::max(original.norm().item<double>(), 1e-30);
  lin = std::make_shared<DenseLinear>(q.dequant.to(dt), d.bias());
  q.dequant = at::Tensor();
  return q;
}

// ---------------------------------------------------------------------------- writing

std::vector<std::string> tokenizer_files(const std::string& from) {
  std::vector<std::string> files;
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json"}) {
    files.push_back((fs::path(from) / f).string());
  }
  return files;
}

at::ScalarType scalar_type_of(DType t) {
  switch (t) {
    case DType::F32: return at::kFloat;
    case DType::BF16: return at::kBFloat16;
    case DType::F16: return at::kHalf;
    case DType::F64: return at::kDouble;
    default: throw Error("scalar_type_of: not a float dtype");
  }
}

// Adds a float tensor in `dtype` (converted with torch's round-to-nearest-even).
void add_tensor(format::CheckpointWriter& writer, const std::string& name, const at::Tensor& t, DType dtype) {
  at::Tensor c = t.to(at::kCPU, scalar_type_of(dtype)).contiguous();
  writer.add(name, dtype, c.sizes().vec(), c.data_ptr(), static_cast<size_t>(c.numel() * c.element_size()));
}

// FNV-1a 64 over the integer weights (original column order) and both scale vectors of one linear:
// recorded in the report so a reader can prove the round trip is bit-exact.
std::string weight_checksum(const at::Tensor& q, const at::Tensor& s_low, const at::Tensor& s_high) {
  uint64_t h = 1469598103934665603ull;
  auto feed = [&](const at::Tensor& t) {
    at::Tensor c = t.contiguous();
    const auto* b = static_cast<const uint8_t*>(c.data_ptr());
    for (int64_t i = 0; i < c.numel() * static_cast<int64_t>(c.element_size()); ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  feed(q.to(at::kChar));
  feed(s_low.to(at::kFloat));
  feed(s_high.to(at::kFloat));
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// The checkpoint metadata of a recipe applied to a model: the layout's per-site splits, bits and
// storage, the KV cache and online-transform settings.
format::CheckpointMeta checkpoint_meta(const ModelConfig& c, const Recipe& recipe, const format::ModelLayout& layout,
                                       const Rotations& R, DType globals_dtype) {
  format::CheckpointMeta meta;
  meta.model = c;
  meta.model.tie_word_embeddings = false;
  meta.r = layout.r;
  meta.r_h = layout.r_h;
  meta.globals_dtype = globals_dtype;
  meta.sites = layout.sites;
  meta.kv = {recipe.kv.enabled, recipe.kv.bits_low, recipe.kv.bits_high, recipe.kv.k_clip_ratio, recipe.kv.v_clip_ratio};
  meta.online.qk_rotation = !R.u_c.empty();
  if (R.u_d) {
    meta.online.down_hadamard = true;
    meta.online.hadamard_n = R.u_d->n;
    meta.online.hadamard_pow2 = R.u_d->pow2;
    meta.online.hadamard_block = R.u_d->block;
    meta.online.hadamard_construction = R.u_d->construction;
  }
  meta.recipe = recipe_to_json(recipe);
  return meta;
}

// Layer l's tensors: norms, each linear (packed integers + scales, or dense weights) and U_C.
// Returns {site: checksum} for the packed linears.
nlohmann::json write_layer_tensors(format::CheckpointWriter& writer, const Decoder& m, int64_t l, const Rotations& R,
                                   const format::CheckpointMeta& meta,
                                   const std::map<LinearKind, QuantizedWeight>& quantized) {
  const DecoderLayer& L = m.layers()[l];
  add_tensor(writer, format::input_norm_tensor(l), L.input_norm_weight, DType::F32);
  add_tensor(writer, format::post_attention_norm_tensor(l), L.post_attention_norm_weight, DType::F32);
  const std::shared_ptr<Linear>* linears[] = {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down};
  nlohmann::json checksums = nlohmann::json::object();
  for (int i = 0; i < format::kNumSites; ++i) {
    const format::SiteKind kind = format::kAllSites[i];
    const format::SiteSpec& spec = meta.sites.at(kind);
    const std::string prefix = format::site_prefix(l, kind);
    const DenseLinear& d = dense(*linears[i], prefix);
    at::Tensor bias = d.bias().defined() ? d.bias().to(at::kFloat).contiguous() : at::Tensor();
    const float* bias_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
    if (spec.storage == format::LinearStorage::kPacked) {
      const QuantizedWeight& q = quantized.at(static_cast<LinearKind>(i));
      at::Tensor qi = q.q.contiguous();
      at::Tensor sl = q.scale_low.to(at::kFloat).contiguous(), sh = q.scale_high.to(at::kFloat).contiguous();
      writer.add_packed_linear(l, spec, qi.data_ptr<int8_t>(), sl.data_ptr<float>(), sh.data_ptr<float>(), bias_ptr);
      checksums[prefix] = weight_checksum(qi, sl, sh);
    } else {
      // Not quantized (weights.method none: kept in the globals' dtype) or bit widths that do not
      // fit the packed containers (dequantized values, exact in float32).
      const DType dt = meta.sites.at(kind).weight_bits_low >= 16 ? meta.globals_dtype : DType::F32;
      at::Tensor w = d.weight().to(at::kCPU, scalar_type_of(dt)).contiguous();
      writer.add_dense_linear(l, spec, dt, w.data_ptr(), bias_ptr);
    }
  }
  if (!R.u_c.empty()) add_tensor(writer, format::qk_rotation_tensor(l), R.u_c[l], DType::F32);
  return checksums;
}

// The rotated embeddings, final norm and lm_head. Written (to disk: the writer does not buffer)
// before the layer loop so that the model can drop them (1 GiB in bf16 at 1B scale) for the rest.
void write_globals(format::CheckpointWriter& writer, const Decoder& m, const format::CheckpointMeta& meta) {
  add_tensor(writer, format::kEmbedTokensTensor, m.embed_weight, meta.globals_dtype);
  add_tensor(writer, format::kFinalNormTensor, m.final_norm_weight, DType::F32);
  add_tensor(writer, format::kLmHeadTensor, dense(m.lm_head, "lm_head").weight(), meta.globals_dtype);
}

// The online Hadamard, then config.json (untied), resq_config.json and tokenizer files; renames into
// place.
void finish_output(format::CheckpointWriter& writer, const Decoder& m, const QuantizeOptions& o, const Rotations& R,
                   const format::CheckpointMeta& meta) {
  if (R.u_d) {
    writer.add_f32(format::kDownHadamardSignsTensor, {R.u_d->n}, R.u_d->signs.data());
    writer.add(format::kDownHadamardBlockTensor, DType::F64, {R.u_d->block, R.u_d->block}, R.u_d->block_matrix.data(),
               R.u_d->block_matrix.size() * sizeof(double));
  }
  ModelConfig saved = m.config();
  saved.tie_word_embeddings = false;
  saved.torch_dtype = dtype_name(meta.globals_dtype) == "BF16" ? "bfloat16" : dtype_name(meta.globals_dtype) == "F16" ? "float16" : "float32";
  writer.commit(meta, model_config_to_json(saved).dump(2) + "\n", tokenizer_files(o.model_dir));
}

// The dtype of embeddings / lm_head in the checkpoint: --globals-dtype, else the source model's
// 16-bit dtype, else float32 (an fp32 source keeps its exact values).
DType choose_globals_dtype(const std::string& requested, const ModelConfig& c) {
  const std::string name = requested.empty() ? c.torch_dtype : requested;
  if (name == "bfloat16" || name == "bf16") return DType::BF16;
  if (name == "float16" || name == "fp16" || name == "half") return DType::F16;
  if (name == "float32" || name == "fp32" || name == "float64" || requested.empty()) return DType::F32;
  throw UsageError("--globals-dtype: expected bfloat16, float16 or float32, got '" + requested + "'");
}

}  // namespace

// ---------------------------------------------------------------------------- public

format::LayoutParams recipe_layout_params(const Recipe& recipe) {
  format::LayoutParams p;
  p.high_fraction = recipe.rotation.high_fraction;
  p.weights_quantized = recipe.weights.method != "none";
  p.weight_bits_low = recipe.weights.bits_low;
  p.weight_bits_high = recipe.weights.bits_high;
  p.weight_down_high = recipe.weights.down_high;
  p.activations_enabled = recipe.activations.enabled;
  p.activation_bits_low = recipe.activations.bits_low;
  p.activation_bits_high = recipe.activations.bits_high;
  p.activation_clip_ratio = recipe.activations.clip_ratio;
  p.activation_down_high = recipe.activations.down_high;
  return p;
}

nlohmann::json quantize_model(const QuantizeOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  const Recipe& recipe = o.recipe;
  if (fs::exists(o.out_dir)) throw UsageError("--out: '" + o.out_dir + "' already exists; choose a new directory");
  if (format::PackedCheckpoint::is_checkpoint_dir(o.model_dir)) {
    throw UsageError("--model: '" + o.model_dir + "' is already a resq packed checkpoint");
  }
  nlohmann::json report;
  nlohmann::json stages = nlohmann::json::object();
  // Each stage's seconds and the process's peak RSS when it ends (monotonic: the first stage whose
  // peak reaches the final one is where the peak happened).
  auto end_stage = [&stages](const std::string& name, std::chrono::steady_clock::time_point since) {
    stages[name + "_seconds"] = seconds_since(since);
    stages[name + "_peak_rss_gib"] = peak_rss_gib();
    log::info(strprintf("quantize: %s done in %.1f s | %s", name.c_str(), seconds_since(since), memory_note().c_str()));
  };
  c10::NoGradGuard no_grad;
  // Keep every buffer up to 32 MiB (glibc's maximum) on the heap and never trim it: freshly mmap()ed
  // buffers page-fault on first touch, which on this VM costs more than the arithmetic done in them
  // (measured 30x on [2048, 8192] float32 temporaries). Big buffers (hidden states, Hessians) are
  // allocated once and reused instead. Process-wide, which suits the CLI that runs this. The free
  // heap is trimmed explicitly once per layer (release_free_heap).
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());

  // 1. Load the global tensors (layers are loaded one at a time below: memory stays bounded by
  //    embeddings + lm_head + one layer + the calibration hidden states) and prepare them.
  auto t = std::chrono::steady_clock::now();
  LoadOptions lo;
  lo.dtype = "float32";
  lo.load_layers = false;
  lo.keep_global_dtype = true;  // embed/lm_head stay bf16 for a bf16 checkpoint (no float32 copies)
  Decoder m = Decoder::load(o.model_dir, lo);
  if (log::enabled(log::Level::debug)) log::debug("quantize: globals loaded | " + memory_note());
  // Calibration and GPTQ forward passes with bf16 products and float32 accumulation for models with
  // hidden size >= 1024, where those passes dominate the run (~5x faster than float32, docs/PERF.md);
  // the weights themselves (fusion, GPTQ, what is written) stay float32/float64 either way. Smaller
  // models take seconds and keep the float32 reference products. RESQ_QUANTIZE_PRODUCTS=bf16|fp32
  // overrides the choice (for A/B measurements).
  bool bf16_products = m.dtype() == at::kFloat && m.device().is_cpu() && m.config().hidden_size >= 1024;
  if (const char* env = std::getenv("RESQ_QUANTIZE_PRODUCTS")) {
    const std::string v(env);
    if (v != "bf16" && v != "fp32") throw UsageError("RESQ_QUANTIZE_PRODUCTS: expected bf16 or fp32, got '" + v + "'");
    bf16_products = v == "bf16";
  }
  if (bf16_products) m.set_matmul_dtype(at::kBFloat16);
  log::info(std::string("quantize: forward products in ") + (bf16_products ? "bf16 (float32 accumulation)" : "float32"));
  const ModelConfig& c = m.config();
  // Which columns are 8-bit at every site, and the subspace sizes r, r_h the rotations keep apart.
  const format::ModelLayout layout = format::model_layout(c, recipe_layout_params(recipe));
  prepare_globals(m, recipe);
  end_stage("load_prepare", t);

  // 2. Calibration data (tokenized like eval: BOS once, then random windows).
  t = std::chrono::steady_clock::now();
  auto tokenizer = load_tokenizer(o.model_dir);
  std::string text = read_text_file(o.calib_path);
  const std::string text_hash = fnv1a_hex(text);
  if (o.calib_wikitext2) text = wikitext_join(text);
  const auto ids = tokenize_for_eval(*tokenizer, text, tokenizer->adds_bos());
  const auto offsets = sample_calibration_offsets(static_cast<int64_t>(ids.size()), o.seqlen, o.nsamples, o.seed);
  at::Tensor calib = at::empty({o.nsamples, o.seqlen}, at::TensorOptions().dtype(at::kLong));
  int64_t* cp = calib.data_ptr<int64_t>();
  for (int64_t s = 0; s < o.nsamples; ++s)
    for (int64_t j = 0; j < o.seqlen; ++j) cp[s * o.seqlen + j] = ids[offsets[s] + j];
  const RopeTables rope = m.rope_tables(o.seqlen);
  // Windows per run_layer call: bounds the per-call activations ([chunk, T, ffn] and friends).
  const int64_t chunk = std::max<int64_t>(1, (int64_t{64} << 20) / (4 * o.seqlen * std::max(c.intermediate_size, c.hidden_size)));

  std::unique_ptr<CovarianceObserver> cov;
  if (recipe.rotation.method == "resq") {
    cov = std::make_unique<CovarianceObserver>(c, bf16_products);
    at::Tensor h = m.embed(calib);
    for_each_layer(m, h, rope, chunk, cov.get(), [](int64_t) {}, "calibrate");
    cov->finish();
  }
  end_stage("calibration", t);

  // 3. PCA + rotations; U_A into the embeddings and lm_head.
  t = std::chrono::steady_clock::now();
  const Rotations R = build_rotations(m, recipe, cov.get(), o.seed, layout.r, layout.r_h);
  cov.reset();
  fuse_globals(m, R);
  end_stage("rotation", t);
  report["spectra"] = R.spectra;

  // 4. Layer by layer: load, prepare, fuse, quantize weights (GPTQ Hessians from inputs produced by
  //    the already-quantized earlier layers), write, unload.
  t = std::chrono::steady_clock::now();
  nlohmann::json layer_errors = nlohmann::json::array();
  const auto& w = recipe.weights;
  const at::ScalarType dt = m.dtype();
  std::map<LinearKind, QuantizedWeight> layer_quantized;  // the current layer's integer weights
  auto quantize_layer = [&](int64_t l, const std::map<LinearKind, at::Tensor>& H) {
    DecoderLayer& L = m.layers()[l];
    auto hess = [&](LinearKind k) { auto it = H.find(k); return it == H.end() ? at::Tensor() : it->second; };
    nlohmann::json e;
    e["layer"] = l;
    auto one = [&](LinearKind kind, std::shared_ptr<Linear>& lin, LinearKind hessian_of) {
      double err = 0.0;
      const at::Tensor mask = site_weight_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
      // q_proj's Hessian also serves k_proj and v_proj, gate_proj's also up_proj.
      const bool last_use = kind == LinearKind::kV || kind == LinearKind::kO || kind == LinearKind::kUp ||
                            kind == LinearKind::kDown;
      layer_quantized[kind] = quantize_linear(lin, mask, w, hess(hessian_of), last_use, dt, &err);
      e[linear_kind_name(kind)] = err;
      if (log::enabled(log::Level::debug)) {
        log::debug(strprintf("weights: layer %" PRId64 " %s quantized | %s", l, linear_kind_name(kind),
                             memory_note(true).c_str()));
      }
    };
    one(LinearKind::kQ, L.q, LinearKind::kQ);
    one(LinearKind::kK, L.k, LinearKind::kQ);
    one(LinearKind::kV, L.v, LinearKind::kQ);
    one(LinearKind::kO, L.o, LinearKind::kO);
    one(LinearKind::kGate, L.gate, LinearKind::kGate);
    one(LinearKind::kUp, L.up, LinearKind::kGate);
    one(LinearKind::kDown, L.down, LinearKind::kDown);
    layer_errors.push_back(e);
  };
  format::CheckpointMeta meta = checkpoint_meta(c, recipe, layout, R, choose_globals_dtype(o.globals_dtype, c));
  nlohmann::json provenance;
  nlohmann::json checksums = nlohmann::json::object();
  {
    format::CheckpointWriter writer(o.out_dir);  // temporary directory, renamed on commit
    at::Tensor h;
    if (w.method == "gptq") h = m.embed(calib);
    // The globals go to disk now and leave memory: only the layers are needed from here on.
    write_globals(writer, m, meta);
    m.embed_weight = at::Tensor();
    m.lm_head.reset();
    const int64_t N = o.nsamples;
    HessianObserver hessian_obs(bf16_products);  // reused by every layer (buffers kept)
    const auto start = std::chrono::steady_clock::now();
    for (int64_t l = 0; l < c.num_layers; ++l) {
      m.load_layer(l);
      prepare_layer(m.layers()[l], dt);
      fuse_layer(m, l, R);
      layer_quantized.clear();
      if (w.method == "gptq") {
        hessian_obs.reset();
        for (int64_t st = 0; st < N; st += chunk) m.run_layer(l, h.narrow(0, st, std::min(chunk, N - st)), rope, &hessian_obs);
        quantize_layer(l, hessian_obs.finish());
        // Outputs of the quantized layer overwrite their inputs in place (windows are independent).
        for (int64_t st = 0; st < N; st += chunk) {
          at::Tensor part = h.narrow(0, st, std::min(chunk, N - st));
          part.copy_(m.run_layer(l, part, rope));
        }
      } else if (w.method == "rtn") {
        quantize_layer(l, {});
      }
      checksums.update(write_layer_tensors(writer, m, l, R, meta, layer_quantized));
      layer_quantized.clear();
      m.unload_layer(l);
      release_free_heap();
      const double elapsed = seconds_since(start);
      log::info(strprintf("weights (%s): layer %" PRId64 "/%" PRId64 " | ETA %.0f s | %s", w.method.c_str(), l + 1,
                          c.num_layers, elapsed / (l + 1) * (c.num_layers - l - 1), memory_note().c_str()));
    }
    // The hidden states (512 MiB at 32 x 2048) and the Hessian buffers (~600 MiB) are not needed
    // while the global tensors are written.
    h = at::Tensor();
    hessian_obs = HessianObserver(bf16_products);
    end_stage("weight_quantization", t);
    report["weight_relative_error"] = layer_errors;

    // 5. Global tensors, config, provenance; then the directory is renamed into place.
    t = std::chrono::steady_clock::now();
    provenance = {{"tool", std::string("resq ") + RESQ_VERSION},
                  {"source_model", o.model_dir},
                  {"recipe_file", o.recipe_path},
                  {"seed", o.seed},
                  {"seeds", {{"rotation", o.seed}, {"calibration_windows", o.seed}}},
                  {"calibration", {{"file", o.calib_path}, {"fnv1a", text_hash}, {"wikitext2_join", o.calib_wikitext2},
                                   {"nsamples", o.nsamples}, {"seqlen", o.seqlen}}}};
    meta.provenance = provenance;
    finish_output(writer, m, o, R, meta);
  }
  end_stage("write", t);

  // 6. Read the checkpoint back (full validation) and report its size against the bit budget.
  const format::PackedCheckpoint written = format::PackedCheckpoint::open(o.out_dir);
  const format::CheckpointSizes sizes = written.sizes();
  double budget_bits = 0.0;  // container bits + two fp32 scales per row (+ o_proj's int32 perm), from the metadata
  int64_t budget_weights = 0;
  for (const auto& [kind, s] : meta.sites) {
    if (s.storage != format::LinearStorage::kPacked) continue;
    budget_weights += c.num_layers * s.N * s.K;
    budget_bits += static_cast<double>(c.num_layers) *
                   (s.N * (8.0 * format::packed4_row_bytes(s.K4()) + 8.0 * s.K8() + 64.0) + (s.permuted() ? 32.0 * s.K : 0.0));
  }
  report["checkpoint"] = {{"dir", o.out_dir},
                          {"file_bytes", sizes.file_bytes},
                          {"quantized_weights", sizes.quantized_weights},
                          {"packed_weight_bytes", sizes.packed_weight_bytes},
                          {"packed_scale_bytes", sizes.packed_scale_bytes},
                          {"dense_linear_bytes", sizes.dense_linear_bytes},
                          {"global_bytes", sizes.global_bytes},
                          {"bits_per_quantized_weight", sizes.bits_per_quantized_weight()},
                          {"budget_bits_per_quantized_weight", budget_weights ? budget_bits / budget_weights : 0.0},
                          {"compression_vs_bf16", sizes.compression_vs_bf16()}};
  report["weight_checksums"] = checksums;
  stages["total_seconds"] = seconds_since(t_start);
  report["stages"] = stages;
  report["peak_rss_gib"] = peak_rss_gib();
  report["recipe"] = recipe_to_json(recipe);
  report["provenance"] = provenance;
  report["out"] = o.out_dir;
  report["bits"] = {{"weights", w.method == "none" ? 16.0 : recipe.mixed_bits(w.bits_low, w.bits_high)},
                    {"activations", recipe.activations.enabled ? recipe.mixed_bits(recipe.activations.bits_low, recipe.activations.bits_high) : 16.0},
                    {"kv", recipe.kv.enabled ? recipe.mixed_bits(recipe.kv.bits_low, recipe.kv.bits_high) : 16.0}};
  return report;
}

}  // namespace resq
