// The ResQ quantization pipeline in simulation: prepare -> calibrate -> PCA/rotations -> fuse ->
// quantize weights (GPTQ/RTN) -> activation/KV fake quantization -> write; and its loader for eval.
#include "resq/quant/pipeline.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "resq/common/error.h"
#include "resq/io/safetensors.h"
#include "resq/linalg/pca.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/shard_writer.h"
#include "resq/quant/quantizers.h"
#include "resq/text/dataset.h"
#include "resq/text/tokenizer.h"

namespace resq {
namespace fs = std::filesystem;

namespace {

constexpr const char* kQuantFile = "resq_quant.json";
constexpr int kQuantFormatVersion = 1;



double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

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

// y = x · M over the last dimension (M [n, n], e.g. U_C applied to q/k after RoPE).
class MatrixTransform : public TensorTransform {
 public:
  explicit MatrixTransform(at::Tensor m) : m_(std::move(m)) {}
  at::Tensor apply(const at::Tensor& x) const override { return at::matmul(x, m_.to(x.device(), x.scalar_type())); }
  const at::Tensor& matrix() const { return m_; }

 private:
  at::Tensor m_;
};

// y = x · T with T an online Hadamard (fast WHT + small dense block), over the last dimension.
class OnlineHadamardTransform : public TensorTransform {
 public:
  explicit OnlineHadamardTransform(OnlineHadamard t) : t_(std::move(t)) {}
  at::Tensor apply(const at::Tensor& x) const override {
    if (x.size(-1) != t_.n) {
      throw ShapeError("online Hadamard of size " + std::to_string(t_.n) + " applied to last dim " +
                       std::to_string(x.size(-1)));
    }
    if (x.scalar_type() == at::kDouble) {
      at::Tensor y = x.contiguous().cpu().clone();
      apply_online_hadamard(t_, y.data_ptr<double>(), y.numel() / t_.n);
      return y.to(x.device());
    }
    at::Tensor y = x.to(at::kFloat).contiguous().cpu().clone();
    apply_online_hadamard(t_, y.data_ptr<float>(), y.numel() / t_.n);
    return y.to(x.device(), x.scalar_type());
  }

 private:
  OnlineHadamard t_;
};

// Simulated quantized linear: fake-quantized input (optional) times dequantized weights.
class SimulatedLinear : public Linear {
 public:
  SimulatedLinear(std::shared_ptr<DenseLinear> dense, std::shared_ptr<TensorTransform> input_quant)
      : dense_(std::move(dense)), input_quant_(std::move(input_quant)) {}
  at::Tensor forward(const at::Tensor& x) const override {
    return dense_->forward(input_quant_ ? input_quant_->apply(x) : x);
  }
  int64_t in_features() const override { return dense_->in_features(); }
  int64_t out_features() const override { return dense_->out_features(); }
  std::string implementation() const override { return "simulated"; }

 private:
  std::shared_ptr<DenseLinear> dense_;
  std::shared_ptr<TensorTransform> input_quant_;
};

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
  at::Tensor lm = dense(m.lm_head, "lm_head").weight().clone();  // [V, d]; a copy unties it
  lm.mul_(m.final_norm_weight.unsqueeze(0));
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

class CovarianceObserver : public ForwardObserver {
 public:
  CovarianceObserver(const ModelConfig& c)
      : c_(c), cov_a(at::zeros({c.hidden_size, c.hidden_size}, at::kDouble)) {
    for (int64_t l = 0; l < c.num_layers; ++l) {
      cov_v.push_back(at::zeros({c.num_kv_heads, c.head_dim, c.head_dim}, at::kDouble));
      cov_k.push_back(at::zeros({c.head_dim, c.head_dim}, at::kDouble));
    }
  }
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override {
    // Attention input and MLP input of every layer -> one shared d x d matrix for U_A.
    if (site.kind != LinearKind::kQ && site.kind != LinearKind::kGate) return;
    at::Tensor x2 = x.reshape({-1, c_.hidden_size}).to(at::kDouble).cpu();
    cov_a.add_(at::mm(x2.t(), x2));
  }
  void on_keys(int64_t layer, const at::Tensor& k) override {
    at::Tensor k2 = k.reshape({-1, c_.head_dim}).to(at::kDouble).cpu();  // summed over heads
    cov_k[layer].add_(at::mm(k2.t(), k2));
  }
  void on_values(int64_t layer, const at::Tensor& v) override {
    // v [B, Hkv, T, hd] -> per head [Hkv, B*T, hd]
    at::Tensor v3 = v.transpose(0, 1).reshape({c_.num_kv_heads, -1, c_.head_dim}).to(at::kDouble).cpu();
    cov_v[layer].add_(at::bmm(v3.transpose(1, 2), v3));
  }
  const ModelConfig& c_;
  at::Tensor cov_a;
  std::vector<at::Tensor> cov_v;  // per layer [Hkv, hd, hd]
  std::vector<at::Tensor> cov_k;  // per layer [hd, hd]
};

// Hessians (XᵀX of the inputs) of one layer's linears for GPTQ.
class HessianObserver : public ForwardObserver {
 public:
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override {
    LinearKind key = site.kind;
    if (key == LinearKind::kK || key == LinearKind::kV) return;  // same input as q
    if (key == LinearKind::kUp) return;                          // same input as gate
    at::Tensor x2 = x.reshape({-1, x.size(-1)}).to(at::kDouble).cpu();
    at::Tensor& h = hessians[key];
    if (!h.defined()) h = at::zeros({x2.size(1), x2.size(1)}, at::kDouble);
    h.add_(at::mm(x2.t(), x2));
  }
  std::map<LinearKind, at::Tensor> hessians;
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
    std::vector<at::Tensor> outs;
    for (int64_t s = 0; s < N; s += chunk) {
      outs.push_back(m.run_layer(l, hidden.narrow(0, s, std::min(chunk, N - s)), rope, obs));
    }
    after_layer(l);
    m.unload_layer(l);
    hidden = at::cat(outs, 0);
    const double elapsed = seconds_since(start);
    spdlog::info("{}: layer {}/{} | {:.0f} tok/s | ETA {:.0f} s", stage, l + 1, m.config().num_layers,
                 (l + 1) * N * hidden.size(1) / std::max(elapsed, 1e-9),
                 elapsed / (l + 1) * (m.config().num_layers - l - 1));
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

// rows [R, d] (compute dtype) · U [d, d] (float64), in row chunks so a [V, d] matrix never needs a
// float64 copy (the lm_head of a 128k vocabulary would be 2 GiB at 1B scale).
at::Tensor rotate_rows(const at::Tensor& rows, const at::Tensor& u) {
  at::Tensor out = at::empty_like(rows);
  const int64_t chunk = 8192;
  for (int64_t r0 = 0; r0 < rows.size(0); r0 += chunk) {
    const int64_t n = std::min(chunk, rows.size(0) - r0);
    out.narrow(0, r0, n).copy_(at::mm(rows.narrow(0, r0, n).to(at::kDouble), u));
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

struct SiteMasks {
  at::Tensor in_mask;    // [d] q/k/v/gate/up inputs
  at::Tensor o_mask;     // [q_size] per head
  at::Tensor down_mask;  // [ffn]
};

SiteMasks site_masks(const ModelConfig& c, int64_t r, int64_t r_h, const Recipe& recipe, bool for_weights) {
  SiteMasks s;
  s.in_mask = high_mask_last(c.hidden_size, r);
  s.o_mask = high_mask_per_head(c.num_heads, c.head_dim, r_h);
  const bool down_high = for_weights ? recipe.weights.down_high : recipe.activations.down_high;
  const int64_t r_ffn = down_high ? static_cast<int64_t>(std::llround(recipe.rotation.high_fraction * c.intermediate_size)) : 0;
  s.down_mask = high_mask_last(c.intermediate_size, r_ffn);
  return s;
}

// Quantizes one dense linear's weight in place (dequantized values), returns the relative error.
double quantize_linear(std::shared_ptr<Linear>& lin, const at::Tensor& mask, const WeightRecipe& w,
                       const at::Tensor& hessian, at::ScalarType dt) {
  DenseLinear& d = dense(lin, "quantize");
  at::Tensor original = d.weight().to(at::kFloat);
  QuantizedWeight q = w.method == "gptq"
                          ? gptq_quantize_weight(original, hessian, mask, w.bits_low, w.bits_high, w.percdamp,
                                                 w.blocksize, w.clip_ratio, w.mse_clip)
                          : rtn_quantize_weight(original, mask, w.bits_low, w.bits_high, w.clip_ratio, w.mse_clip);
  const double err = (q.dequant - original).norm().item<double>() / std::max(original.norm().item<double>(), 1e-30);
  lin = std::make_shared<DenseLinear>(q.dequant.to(dt), d.bias());
  return err;
}

void install_activation_quant(Decoder& m, const Recipe& recipe, int64_t r, int64_t r_h) {
  const ModelConfig& c = m.config();
  const auto& a = recipe.activations;
  for (auto& L : m.layers()) {
    if (a.enabled) {
      const SiteMasks s = site_masks(c, r, r_h, recipe, /*for_weights=*/false);
      auto in_q = std::make_shared<ActivationFakeQuant>(s.in_mask, a.bits_low, a.bits_high, a.clip_ratio);
      auto o_q = std::make_shared<ActivationFakeQuant>(s.o_mask, a.bits_low, a.bits_high, a.clip_ratio);
      auto down_q = std::make_shared<ActivationFakeQuant>(s.down_mask, a.bits_low, a.bits_high, a.clip_ratio);
      auto wrap = [](std::shared_ptr<Linear>& lin, std::shared_ptr<TensorTransform> quant) {
        auto d = std::dynamic_pointer_cast<DenseLinear>(lin);
        if (!d) throw Error("install_activation_quant: expected dense linears");
        lin = std::make_shared<SimulatedLinear>(d, std::move(quant));
      };
      for (auto* lin : {&L.q, &L.k, &L.v, &L.gate, &L.up}) wrap(*lin, in_q);
      wrap(L.o, o_q);
      wrap(L.down, down_q);
    }
    if (recipe.kv.enabled) {
      const auto& kv = recipe.kv;
      L.k_cache_transform = std::make_shared<KvFakeQuant>(c.head_dim, r_h, kv.bits_low, kv.bits_high, kv.k_clip_ratio);
      L.v_cache_transform = std::make_shared<KvFakeQuant>(c.head_dim, r_h, kv.bits_low, kv.bits_high, kv.v_clip_ratio);
    }
  }
}

int64_t high_count(double fraction, int64_t n) { return static_cast<int64_t>(std::llround(fraction * n)); }

// ---------------------------------------------------------------------------- writing

void copy_tokenizer_files(const std::string& from, const fs::path& to) {
  for (const char* f : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json"}) {
    const fs::path src = fs::path(from) / f;
    if (fs::exists(src)) fs::copy_file(src, to / f);
  }
}

// Layer l's tensors (fused, fake-quantized) in HF names, plus its U_C.
void write_layer_tensors(ShardWriter& writer, const Decoder& m, int64_t l, const Rotations& R) {
  const DecoderLayer& L = m.layers()[l];
  const std::string p = "model.layers." + std::to_string(l) + ".";
  auto add = [&](const std::string& name, const at::Tensor& t) { writer.add(name, t.to(at::kFloat)); };
  add(p + "input_layernorm.weight", L.input_norm_weight);
  add(p + "post_attention_layernorm.weight", L.post_attention_norm_weight);
  const std::pair<const char*, const std::shared_ptr<Linear>*> linears[] = {
      {"self_attn.q_proj", &L.q}, {"self_attn.k_proj", &L.k}, {"self_attn.v_proj", &L.v},
      {"self_attn.o_proj", &L.o}, {"mlp.gate_proj", &L.gate}, {"mlp.up_proj", &L.up}, {"mlp.down_proj", &L.down}};
  for (const auto& [name, lin] : linears) {
    const DenseLinear& d = dense(*lin, name);
    add(p + name + ".weight", d.weight());
    if (d.bias().defined()) add(p + name + ".bias", d.bias());
  }
  if (!R.u_c.empty()) add("resq.layers." + std::to_string(l) + ".qk_rotation", R.u_c[l]);
}

// Global tensors, shard index, config.json (untied), tokenizer files and resq_quant.json.
void finish_output(ShardWriter& writer, const fs::path& dir, const Decoder& m, const QuantizeOptions& o,
                   const Rotations& R, int64_t r, int64_t r_h, const nlohmann::json& provenance) {
  writer.add("model.embed_tokens.weight", m.embed_weight.to(at::kFloat));
  writer.add("model.norm.weight", m.final_norm_weight.to(at::kFloat));
  writer.add("lm_head.weight", dense(m.lm_head, "lm_head").weight().to(at::kFloat));
  nlohmann::json online = nlohmann::json::object();
  if (R.u_d) {
    writer.add("resq.down_hadamard.signs", at::tensor(at::ArrayRef<float>(R.u_d->signs)));
    writer.add("resq.down_hadamard.block",
               at::tensor(at::ArrayRef<double>(R.u_d->block_matrix)).view({R.u_d->block, R.u_d->block}));
    online["down_hadamard"] = {{"n", R.u_d->n}, {"pow2", R.u_d->pow2}, {"block", R.u_d->block},
                               {"construction", R.u_d->construction}};
  }
  online["qk_rotation"] = !R.u_c.empty();
  writer.finish({{"format", "pt"}, {"resq", "simulated"}});
  ModelConfig saved = m.config();
  saved.tie_word_embeddings = false;
  saved.torch_dtype = "float32";
  std::ofstream(dir / "config.json") << model_config_to_json(saved).dump(2) << "\n";
  copy_tokenizer_files(o.model_dir, dir);
  nlohmann::json q = {{"format", "resq-simulated"},
                      {"format_version", kQuantFormatVersion},
                      {"recipe", recipe_to_json(o.recipe)},
                      {"r", r},
                      {"r_h", r_h},
                      {"online", online},
                      {"provenance", provenance}};
  std::ofstream(dir / kQuantFile) << q.dump(2) << "\n";
}

}  // namespace

// ---------------------------------------------------------------------------- public

bool is_quantized_model_dir(const std::string& dir) { return fs::exists(fs::path(dir) / kQuantFile); }

Decoder load_model_for_eval(const std::string& dir, const LoadOptions& options) {
  Decoder m = Decoder::load(dir, options);
  if (!is_quantized_model_dir(dir)) return m;
  const std::string path = (fs::path(dir) / kQuantFile).string();
  nlohmann::json q;
  try {
    q = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": invalid JSON: " + e.what());
  }
  if (q.value("format", "") != "resq-simulated" || q.value("format_version", 0) != kQuantFormatVersion) {
    throw FormatError(path + ": expected format resq-simulated version " + std::to_string(kQuantFormatVersion));
  }
  const Recipe recipe = parse_recipe(q.at("recipe"), path + " (recipe)");
  const int64_t r = q.at("r").get<int64_t>(), r_h = q.at("r_h").get<int64_t>();
  TensorStore store = TensorStore::open_model_dir(dir);
  const ModelConfig& c = m.config();
  const at::ScalarType dt = m.dtype();
  auto read = [&](const std::string& name, std::vector<int64_t> shape, at::ScalarType as) {
    const TensorView& v = store.require(name, shape);
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kDouble));
    tensor_to_float64(v, t.data_ptr<double>());
    return t.to(as);
  };
  const auto& online = q.at("online");
  std::shared_ptr<TensorTransform> down;
  if (online.contains("down_hadamard")) {
    const auto& dh = online["down_hadamard"];
    OnlineHadamard t;
    t.n = dh.at("n").get<int64_t>();
    t.pow2 = dh.at("pow2").get<int64_t>();
    t.block = dh.at("block").get<int64_t>();
    t.construction = dh.value("construction", "");
    if (t.n != c.intermediate_size || t.pow2 * t.block != t.n) throw FormatError(path + ": inconsistent down_hadamard sizes");
    at::Tensor signs = read("resq.down_hadamard.signs", {t.n}, at::kFloat);
    at::Tensor block = read("resq.down_hadamard.block", {t.block, t.block}, at::kDouble);
    t.signs.assign(signs.data_ptr<float>(), signs.data_ptr<float>() + t.n);
    t.block_matrix.assign(block.data_ptr<double>(), block.data_ptr<double>() + block.numel());
    down = std::make_shared<OnlineHadamardTransform>(t);
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    DecoderLayer& L = m.layers()[l];
    if (online.value("qk_rotation", false)) {
      L.qk_transform = std::make_shared<MatrixTransform>(
          read("resq.layers." + std::to_string(l) + ".qk_rotation", {c.head_dim, c.head_dim}, dt));
    }
    L.down_input_transform = down;
  }
  install_activation_quant(m, recipe, r, r_h);
  return m;
}

nlohmann::json quantize_model(const QuantizeOptions& o) {
  const auto t_start = std::chrono::steady_clock::now();
  const Recipe& recipe = o.recipe;
  if (fs::exists(o.out_dir)) throw UsageError("--out: '" + o.out_dir + "' already exists; choose a new directory");
  if (is_quantized_model_dir(o.model_dir)) throw UsageError("--model: '" + o.model_dir + "' is already quantized");
  nlohmann::json report;
  nlohmann::json stages = nlohmann::json::object();
  at::NoGradGuard no_grad;

  // 1. Load the global tensors (layers are loaded one at a time below: memory stays bounded by
  //    embeddings + lm_head + one layer + the calibration hidden states) and prepare them.
  auto t = std::chrono::steady_clock::now();
  LoadOptions lo;
  lo.dtype = "float32";
  lo.load_layers = false;
  Decoder m = Decoder::load(o.model_dir, lo);
  const ModelConfig& c = m.config();
  const int64_t r = high_count(recipe.rotation.high_fraction, c.hidden_size);
  const int64_t r_h = high_count(recipe.rotation.high_fraction, c.head_dim);
  prepare_globals(m, recipe);
  stages["load_prepare_seconds"] = seconds_since(t);

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
    cov = std::make_unique<CovarianceObserver>(c);
    at::Tensor h = m.embed(calib);
    for_each_layer(m, h, rope, chunk, cov.get(), [](int64_t) {}, "calibrate");
  }
  stages["calibration_seconds"] = seconds_since(t);

  // 3. PCA + rotations; U_A into the embeddings and lm_head.
  t = std::chrono::steady_clock::now();
  const Rotations R = build_rotations(m, recipe, cov.get(), o.seed, r, r_h);
  cov.reset();
  fuse_globals(m, R);
  stages["rotation_seconds"] = seconds_since(t);
  report["spectra"] = R.spectra;

  // 4. Layer by layer: load, prepare, fuse, quantize weights (GPTQ Hessians from inputs produced by
  //    the already-quantized earlier layers), write, unload.
  t = std::chrono::steady_clock::now();
  nlohmann::json layer_errors = nlohmann::json::array();
  const auto& w = recipe.weights;
  const SiteMasks masks = site_masks(c, r, r_h, recipe, /*for_weights=*/true);
  const at::ScalarType dt = m.dtype();
  auto quantize_layer = [&](int64_t l, const std::map<LinearKind, at::Tensor>& H) {
    DecoderLayer& L = m.layers()[l];
    auto hess = [&](LinearKind k) { auto it = H.find(k); return it == H.end() ? at::Tensor() : it->second; };
    nlohmann::json e;
    e["layer"] = l;
    e["q_proj"] = quantize_linear(L.q, masks.in_mask, w, hess(LinearKind::kQ), dt);
    e["k_proj"] = quantize_linear(L.k, masks.in_mask, w, hess(LinearKind::kQ), dt);
    e["v_proj"] = quantize_linear(L.v, masks.in_mask, w, hess(LinearKind::kQ), dt);
    e["o_proj"] = quantize_linear(L.o, masks.o_mask, w, hess(LinearKind::kO), dt);
    e["gate_proj"] = quantize_linear(L.gate, masks.in_mask, w, hess(LinearKind::kGate), dt);
    e["up_proj"] = quantize_linear(L.up, masks.in_mask, w, hess(LinearKind::kGate), dt);
    e["down_proj"] = quantize_linear(L.down, masks.down_mask, w, hess(LinearKind::kDown), dt);
    layer_errors.push_back(e);
  };
  const fs::path final_dir(o.out_dir);
  const fs::path tmp = final_dir.string() + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  nlohmann::json provenance;
  try {
    ShardWriter writer(tmp.string(), int64_t{2} << 30);
    at::Tensor h;
    if (w.method == "gptq") h = m.embed(calib);
    const int64_t N = o.nsamples;
    const auto start = std::chrono::steady_clock::now();
    for (int64_t l = 0; l < c.num_layers; ++l) {
      m.load_layer(l);
      prepare_layer(m.layers()[l], dt);
      fuse_layer(m, l, R);
      if (w.method == "gptq") {
        HessianObserver obs;
        for (int64_t st = 0; st < N; st += chunk) m.run_layer(l, h.narrow(0, st, std::min(chunk, N - st)), rope, &obs);
        quantize_layer(l, obs.hessians);
        std::vector<at::Tensor> outs;
        for (int64_t st = 0; st < N; st += chunk) outs.push_back(m.run_layer(l, h.narrow(0, st, std::min(chunk, N - st)), rope));
        h = at::cat(outs, 0);
      } else if (w.method == "rtn") {
        quantize_layer(l, {});
      }
      write_layer_tensors(writer, m, l, R);
      m.unload_layer(l);
      const double elapsed = seconds_since(start);
      spdlog::info("weights ({}): layer {}/{} | ETA {:.0f} s", w.method, l + 1, c.num_layers,
                   elapsed / (l + 1) * (c.num_layers - l - 1));
    }
    stages["weight_quantization_seconds"] = seconds_since(t);
    report["weight_relative_error"] = layer_errors;

    // 5. Global tensors, config, provenance; then the directory is renamed into place.
    t = std::chrono::steady_clock::now();
    provenance = {{"tool", std::string("resq ") + RESQ_VERSION},
                  {"source_model", o.model_dir},
                  {"recipe_file", o.recipe_path},
                  {"seed", o.seed},
                  {"calibration", {{"file", o.calib_path}, {"fnv1a", text_hash}, {"wikitext2_join", o.calib_wikitext2},
                                   {"nsamples", o.nsamples}, {"seqlen", o.seqlen}}}};
    finish_output(writer, tmp, m, o, R, r, r_h, provenance);
    if (fs::exists(final_dir)) throw UsageError("--out: '" + o.out_dir + "' already exists");
    fs::rename(tmp, final_dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  stages["write_seconds"] = seconds_since(t);
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
