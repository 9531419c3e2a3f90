// Learned rotations inside the ResQ subspaces (recipe rotation.learn, docs/QUANTIZE.md "Learned
// rotations"): Cayley SGD on an end-to-end loss of the fake-quantized model or on the Fisher-weighted
// expected quantization noise recorded from the fp model ("noise"), held-out early stopping.
#include "learned_rotation.h"
#include "resq/quant/rotation_noise.h"
#include "resq/quant/ste_quant.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <map>
#include <tuple>

#include "resq/common/error.h"
#include "resq/common/log.h"
#include "resq/format/layout.h"
#include "resq/linalg/random.h"
#include "resq/quant/cayley.h"
#include "resq/transforms/fake_quant.h"
#include "resq/transforms/masks.h"
#include "resq/transforms/online.h"

namespace resq::pipeline {

namespace {

// Objective "noise": the recorded activations and Fisher weights stay under this many bytes (the
// token count adapts: ~5.6 KiB per token on stories260K, ~450 KiB on a 16-layer 2048-wide model).
constexpr int64_t kNoiseBytes = int64_t{1} << 30;

// A fake quantizer of activations (per token, two parts along the last dim) with the exact forward
// value of fake_quant_per_token and the scale-aware straight-through gradient of ste_activation_quant.
class ScaleAwareFakeQuant : public TensorTransform {
 public:
  ScaleAwareFakeQuant(at::Tensor high_mask, int bits_low, int bits_high, double clip_ratio)
      : mask_(std::move(high_mask)), bits_low_(bits_low), bits_high_(bits_high), clip_(clip_ratio) {}
  at::Tensor apply(const at::Tensor& x) const override {
    const at::Tensor exact = fake_quant_per_token(x.detach(), mask_, bits_low_, bits_high_, clip_);
    return ste_activation_quant(x, exact, mask_, bits_low_, bits_high_, clip_);
  }

 private:
  at::Tensor mask_;  // [K] bool
  int bits_low_, bits_high_;
  double clip_;
};

// The linear of a fake-quantized model during learning: weight [out, in] (a function of the
// rotations: it carries their autograd graph; already fake-quantized by the caller), its input
// fake-quantized per token by input_quant (none: fp). x [..., in] -> [..., out].
class StraightThroughLinear : public Linear {
 public:
  StraightThroughLinear(at::Tensor weight, at::Tensor bias, std::shared_ptr<TensorTransform> input_quant,
                        std::shared_ptr<TensorTransform> output_probe = nullptr)
      : weight_(std::move(weight)), bias_(std::move(bias)), input_quant_(std::move(input_quant)),
        output_probe_(std::move(output_probe)) {}
  at::Tensor forward(const at::Tensor& x) const override {
    const at::Tensor xq = input_quant_ ? input_quant_->apply(x) : x;
    const at::Tensor y = bias_.defined() ? at::linear(xq, weight_, bias_) : at::linear(xq, weight_);
    return output_probe_ ? output_probe_->apply(y) : y;
  }
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  std::string implementation() const override { return "learning"; }

 private:
  at::Tensor weight_, bias_;
  std::shared_ptr<TensorTransform> input_quant_, output_probe_;
};

// Records what passes through it (x, detached) and returns x + δ with δ a zero leaf with grad, so that
// after a backward pass δ.grad() is ∂loss/∂x. One probe may stand at several inputs that receive
// the same tensor (q/k/v, gate/up): the gradients add up, as the noise of one quantization would.
class GradientProbe : public TensorTransform {
 public:
  at::Tensor apply(const at::Tensor& x) const override {
    if (!delta_.defined()) {
      x_ = x.detach();
      delta_ = at::zeros_like(x_).requires_grad_(true);
    }
    return x + delta_;
  }
  const at::Tensor& x() const { return x_; }
  at::Tensor grad() const { return delta_.grad().defined() ? delta_.grad() : at::zeros_like(x_); }

 private:
  mutable at::Tensor x_, delta_;
};

// The probes of one layer: the inputs of q/k/v, o and gate/up, and the K and V caches; the outputs
// of q, k, gate and up (the weights whose rows no learned rotation mixes).
struct LayerProbes {
  std::shared_ptr<GradientProbe> attn = std::make_shared<GradientProbe>(), o = std::make_shared<GradientProbe>(),
                                 mlp = std::make_shared<GradientProbe>(), k = std::make_shared<GradientProbe>(),
                                 v = std::make_shared<GradientProbe>();
  std::map<LinearKind, std::shared_ptr<GradientProbe>> out = {{LinearKind::kQ, std::make_shared<GradientProbe>()},
                                                              {LinearKind::kK, std::make_shared<GradientProbe>()},
                                                              {LinearKind::kGate, std::make_shared<GradientProbe>()},
                                                              {LinearKind::kUp, std::make_shared<GradientProbe>()}};
};

// An orthogonal matrix U0 · blockdiag(R_low, R_high): U0 the PCA basis with its random rotations
// (build_rotations), R the learned rotations of the low [n - r] and high [r] subspaces (the last r
// columns, HighRule::kLast), both starting at the identity. float64.
struct SubspaceRotation {
  at::Tensor u0;               // [n, n]
  std::vector<at::Tensor> r;   // [n - r, n - r], [r, r] (empty blocks left out); leaves with grad
  std::vector<at::Tensor> mom; // momentum of each block (skew-symmetric)

  SubspaceRotation(const at::Tensor& u, int64_t high) : u0(u) {
    const int64_t n = u.size(0);
    for (int64_t size : {n - high, high}) {
      if (size == 0) continue;
      // On U's device (quantize --device cuda learns there).
      r.push_back(at::eye(size, u.options().dtype(at::kDouble)).requires_grad_(true));
      mom.push_back(at::zeros({size, size}, u.options().dtype(at::kDouble)));
    }
  }
  at::Tensor learned() const { return r.size() == 1 ? r[0] : at::block_diag(r); }  // blockdiag(R_low, R_high)
  at::Tensor matrix() const { return at::mm(u0, learned()); }
};

double orthogonality_error(const at::Tensor& u) {
  return (at::mm(u.t(), u) - at::eye(u.size(0), u.options())).norm().item<double>();
}

}  // namespace

}  // namespace resq::pipeline

namespace resq {

void cayley_sgd_step(at::Tensor& x, const at::Tensor& grad, at::Tensor& momentum, double lr, double beta) {
  const at::Tensor a = at::mm(grad, x.t()) - at::mm(x, grad.t());
  momentum.mul_(beta).add_(a);
  const double norm = momentum.norm().item<double>();
  if (norm == 0.0) return;
  const double alpha = std::min(lr, 1.0 / norm);
  const at::Tensor eye = at::eye(x.size(0), x.options());
  const at::Tensor half = momentum * (alpha / 2);
  x = at::linalg_solve(eye + half, at::mm(eye - half, x));
}

}  // namespace resq

namespace resq::pipeline {

nlohmann::json learn_rotations(Decoder& m, const Recipe& recipe, const format::ModelLayout& layout,
                               const at::Tensor& calib, uint64_t seed, Rotations& R) {
  const LearnRecipe& lr = recipe.rotation.learn;
  const ModelConfig& c = m.config();
  const auto start = std::chrono::steady_clock::now();
  c10::AutoGradMode grad_mode(true);
  // The learning forward takes the float32 reference products (autograd does not go through the
  // bf16 GEMM path); restored afterwards.
  const at::ScalarType matmul_dtype = m.matmul_dtype();
  m.set_matmul_dtype(at::kFloat);
  const int64_t L = c.num_layers, Hkv = c.num_kv_heads, hd = c.head_dim, G = c.num_heads / c.num_kv_heads;
  const int64_t N = calib.size(0), T = calib.size(1);

  // Every layer resident and prepared (norms folded): memory bounded by the model.
  std::vector<std::map<LinearKind, std::pair<at::Tensor, at::Tensor>>> base(L);  // [out, in] float32, bias
  for (int64_t l = 0; l < L; ++l) {
    m.load_layer(l);
    prepare_layer(m.layers()[l], m.dtype());
    DecoderLayer& Ly = m.layers()[l];
    auto keep = [&](LinearKind k, const std::shared_ptr<Linear>& lin) {
      const DenseLinear& d = dense(lin, "learn_rotations");
      base[l][k] = {d.weight().to(at::kFloat), d.bias().defined() ? d.bias().to(at::kFloat) : at::Tensor()};
    };
    keep(LinearKind::kQ, Ly.q), keep(LinearKind::kK, Ly.k), keep(LinearKind::kV, Ly.v), keep(LinearKind::kO, Ly.o);
    keep(LinearKind::kGate, Ly.gate), keep(LinearKind::kUp, Ly.up), keep(LinearKind::kDown, Ly.down);
  }
  const at::Tensor embed = m.embed_weight.to(at::kFloat);                        // [V, d]
  const at::Tensor lm_head = dense(m.lm_head, "lm_head").weight().to(at::kFloat); // [V, d]
  // U_D stays a randomized Hadamard; its dense form [ffn, ffn] carries gradients to gate/up.
  const at::Tensor u_d = R.u_d ? to_tensor(online_hadamard_dense(*R.u_d)).to(m.device(), at::kFloat) : at::Tensor();

  SubspaceRotation ua(R.u_a, layout.r);
  std::vector<std::vector<SubspaceRotation>> ub(L);
  std::vector<std::vector<SubspaceRotation>> uc(R.u_c.empty() ? 0 : L);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t h = 0; h < Hkv; ++h) ub[l].emplace_back(R.u_b[l][h], layout.r_h);
    if (!R.u_c.empty())
      for (int64_t h = 0; h < Hkv; ++h) uc[l].emplace_back(R.u_c[l][h], layout.r_h);
  }
  std::vector<SubspaceRotation*> all{&ua};
  for (auto& v : ub)
    for (auto& s : v) all.push_back(&s);
  for (auto& v : uc)
    for (auto& s : v) all.push_back(&s);

  const auto& w = recipe.weights;
  const auto& act = recipe.activations;
  const auto& kv = recipe.kv;
  auto weight_q = [&](const at::Tensor& wt, LinearKind kind) {
    if (w.method == "none" || lr.weights_in_loop == "none") return wt;
    const at::Tensor mask = site_weight_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
    const at::Tensor exact = rtn_quantize_weight(wt.detach(), mask, w.bits_low, w.bits_high, w.clip_ratio, false).dequant;
    return ste_weight_quant(wt, exact, mask, w.bits_low, w.bits_high, w.clip_ratio);
  };
  auto input_q = [&](LinearKind kind) -> std::shared_ptr<TensorTransform> {
    if (!act.enabled) return nullptr;
    const at::Tensor mask = site_activation_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
    return std::make_shared<ScaleAwareFakeQuant>(mask, act.bits_low, act.bits_high, act.clip_ratio);
  };
  // Objective "noise" with weights in the loop: the RTN noise of the q, k, gate and up weights (rotated
  // by U_A on their input side only) joins the activations' and caches'.
  const bool weight_noise = lr.objective == "noise" && w.method != "none" && lr.weights_in_loop != "none";
  // Logits [B, T, V] of ids [B, T] with the current rotations: the W/A/KV fake-quantized model, or
  // (quantized = false) the floating-point model, whose function the rotations do not change — with
  // probes (one LayerProbes per layer) at every quantized activation and cache when given.
  const RopeTables rope = m.rope_tables(T);
  auto logits_of = [&](const at::Tensor& ids, bool quantized, const std::vector<LayerProbes>* probes = nullptr) {
    auto probe_of = [&](int64_t l, LinearKind kind) -> std::shared_ptr<TensorTransform> {
      const LayerProbes& p = (*probes)[l];
      switch (kind) {
        case LinearKind::kQ: case LinearKind::kK: case LinearKind::kV: return p.attn;
        case LinearKind::kGate: case LinearKind::kUp: return p.mlp;
        case LinearKind::kO: return p.o;
        default: return nullptr;  // down_proj: U_D is not learned
      }
    };
    int64_t layer = 0;
    auto install = [&](std::shared_ptr<Linear>& lin, LinearKind kind, const at::Tensor& wt, const at::Tensor& b) {
      if (quantized || !probes) {
        lin = std::make_shared<StraightThroughLinear>(quantized ? weight_q(wt, kind) : wt, b, quantized ? input_q(kind) : nullptr);
        return;
      }
      const auto out = (*probes)[layer].out.find(kind);
      lin = std::make_shared<StraightThroughLinear>(wt, b, act.enabled || weight_noise ? probe_of(layer, kind) : nullptr,
                                                    weight_noise && out != (*probes)[layer].out.end() ? out->second : nullptr);
    };
    const at::Tensor a = ua.matrix().to(at::kFloat);  // [d, d]
    at::Tensor h = at::mm(at::embedding(embed, ids.to(embed.device())).reshape({-1, c.hidden_size}), a)
                       .view({ids.size(0), T, -1});
    for (int64_t l = 0; l < L; ++l) {
      DecoderLayer& Ly = m.layers()[l];
      auto& b = base[l];
      layer = l;
      const std::pair<LinearKind, std::shared_ptr<Linear>*> inputs[] = {
          {LinearKind::kQ, &Ly.q}, {LinearKind::kK, &Ly.k}, {LinearKind::kGate, &Ly.gate}, {LinearKind::kUp, &Ly.up}};
      for (const auto& [kind, lin] : inputs) install(*lin, kind, at::mm(b[kind].first, a), b[kind].second);
      // v rows of kv head h by U_B[h]ᵀ; o columns of query head q by U_B[q / G]; o output by U_Aᵀ.
      std::vector<at::Tensor> v_rows, ubs;
      at::Tensor wv = at::mm(b[LinearKind::kV].first, a), bv = b[LinearKind::kV].second;
      std::vector<at::Tensor> bv_rows;
      for (int64_t h = 0; h < Hkv; ++h) {
        const at::Tensor u = ub[l][h].matrix().to(at::kFloat);
        v_rows.push_back(at::mm(u.t(), wv.narrow(0, h * hd, hd)));
        if (bv.defined()) bv_rows.push_back(at::mv(u.t(), bv.narrow(0, h * hd, hd)));
        for (int64_t g = 0; g < G; ++g) ubs.push_back(u);
      }
      install(Ly.v, LinearKind::kV, at::cat(v_rows, 0), bv.defined() ? at::cat(bv_rows, 0) : bv);
      const at::Tensor bo = b[LinearKind::kO].second;
      install(Ly.o, LinearKind::kO, at::mm(at::mm(a.t(), b[LinearKind::kO].first), at::block_diag(ubs)),
              bo.defined() ? at::mv(a.t(), bo) : bo);
      at::Tensor wd = at::mm(a.t(), b[LinearKind::kDown].first);
      if (u_d.defined()) {
        wd = at::mm(wd, u_d);
        Ly.down_input_transform = std::make_shared<MatrixTransform>(u_d);
      }
      const at::Tensor bd = b[LinearKind::kDown].second;
      install(Ly.down, LinearKind::kDown, wd, bd.defined() ? at::mv(a.t(), bd) : bd);
      if (uc.empty()) {
        Ly.qk_transform = nullptr;
      } else {
        std::vector<at::Tensor> ucs;  // [Hkv] -> [hd, hd]
        for (auto& s : uc[l]) ucs.push_back(s.matrix().to(at::kFloat));
        Ly.qk_transform = std::make_shared<MatrixTransform>(at::stack(ucs));
      }
      Ly.k_cache_transform = Ly.v_cache_transform = nullptr;
      if (kv.enabled && quantized) {
        // K/V [B, H, T, head_dim], per (token, head) with the last r_h channels high, as KvFakeQuant.
        const at::Tensor kv_mask = high_mask_last(hd, layout.r_h);
        Ly.k_cache_transform = std::make_shared<ScaleAwareFakeQuant>(kv_mask, kv.bits_low, kv.bits_high, kv.k_clip_ratio);
        Ly.v_cache_transform = std::make_shared<ScaleAwareFakeQuant>(kv_mask, kv.bits_low, kv.bits_high, kv.v_clip_ratio);
      } else if (kv.enabled && probes) {
        Ly.k_cache_transform = (*probes)[l].k;
        Ly.v_cache_transform = (*probes)[l].v;
      }
      h = m.run_layer(l, h, rope);
    }
    const at::Tensor x = rms_norm(h, m.final_norm_weight.to(at::kFloat), c.rms_norm_eps);  // final norm folded: ones
    return at::linear(x, at::mm(lm_head, a));                                             // [B, T, V]
  };

  // The fp model's next-token log-probabilities [T, V] of window i (no grad), kept while their total
  // stays under kTeacherCacheBytes (all of them for small models) and recomputed otherwise.
  constexpr int64_t kTeacherCacheBytes = int64_t{1} << 30;
  std::map<int64_t, at::Tensor> teacher_cache;
  int64_t teacher_bytes = 0;
  auto teacher_of = [&](const std::vector<int64_t>& windows) {
    c10::NoGradGuard no_grad;
    std::vector<int64_t> missing;
    for (int64_t i : windows)
      if (!teacher_cache.count(i)) missing.push_back(i);
    std::map<int64_t, at::Tensor> fresh;
    if (!missing.empty()) {
      const at::Tensor lp = at::log_softmax(logits_of(calib.index_select(0, at::tensor(missing, at::kLong)), false), -1);
      for (size_t k = 0; k < missing.size(); ++k) {
        fresh[missing[k]] = lp[k];
        if (teacher_bytes + lp[k].nbytes() <= kTeacherCacheBytes) {
          teacher_cache[missing[k]] = lp[k].clone();
          teacher_bytes += lp[k].nbytes();
        }
      }
    }
    std::vector<at::Tensor> rows;
    for (int64_t i : windows) rows.push_back(teacher_cache.count(i) ? teacher_cache.at(i) : fresh.at(i));
    return at::stack(rows);  // [B, T, V]
  };

  // The objective on calibration windows `windows` with the current rotations (a scalar with the
  // rotations' autograd graph when grad mode is on): mean over predicted tokens.
  // "noise" learns on its own objective and measures the held-out windows by KL.
  const bool kl = lr.objective != "ce";
  const char* measure = kl ? "kl" : "ce";  // what loss_of and the held-out figures are
  auto loss_of = [&](const std::vector<int64_t>& windows) {
    const at::Tensor logits = logits_of(calib.index_select(0, at::tensor(windows, at::kLong)), true);
    const int64_t V = logits.size(-1);
    if (kl) {
      const at::Tensor lp_q = at::log_softmax(logits, -1), lp_fp = teacher_of(windows);
      return (lp_fp.exp() * (lp_fp - lp_q)).sum(-1).mean();
    }
    const at::Tensor ids = calib.index_select(0, at::tensor(windows, at::kLong));
    return at::nll_loss(at::log_softmax(logits.narrow(1, 0, T - 1).reshape({-1, V}), -1),
                        ids.narrow(1, 1, T - 1).reshape({-1}).to(logits.device()));
  };

  // Training windows: the first N - n_hold; held out: the last n_hold (none when holdout is 0). The
  // report's "fixed" windows are the held-out ones, or the first min(N, 16) training windows.
  int64_t n_hold = lr.holdout > 0 ? std::max<int64_t>(1, std::llround(lr.holdout * N)) : 0;
  if (n_hold >= N)
    throw ConfigError(strprintf("rotation.learn.holdout %.3g leaves no training window of the %" PRId64
                                " calibration windows (use more --nsamples or a smaller holdout)", lr.holdout, N));
  const int64_t n_train = N - n_hold;
  std::vector<int64_t> fixed;
  for (int64_t i = n_hold ? n_train : 0; i < (n_hold ? N : std::min<int64_t>(N, 16)); ++i) fixed.push_back(i);
  auto fixed_loss = [&] {
    c10::NoGradGuard no_grad;
    double sum = 0;
    for (size_t s0 = 0; s0 < fixed.size(); s0 += lr.batch) {
      const size_t k = std::min<size_t>(lr.batch, fixed.size() - s0);
      sum += loss_of({fixed.begin() + s0, fixed.begin() + s0 + k}).item<double>() * k;
    }
    return sum / fixed.size();
  };
  auto snapshot = [&] {
    std::vector<at::Tensor> r;
    for (SubspaceRotation* s : all)
      for (auto& x : s->r) r.push_back(x.detach().clone());
    return r;
  };
  // Objective "noise": record every learned-rotation site of the fp model on the training windows
  // (at most learn.tokens tokens and kNoiseBytes of records) with the Fisher weights of its two parts,
  // once; the steps then minimize expected_noise, which needs no forward pass of the model.
  std::vector<NoiseSite> noise_sites;
  double noise_start = 1.0;
  int64_t noise_tokens = 0;
  std::vector<double> site_start;  // per site, per token, before learning
  auto learned_rotations = [&] {  // index i: all[i]; ua 0, ub[l][h] 1 + l·Hkv + h, uc[l][h] 1 + (L + l)·Hkv + h
    std::vector<at::Tensor> q;
    for (SubspaceRotation* s : all) q.push_back(s->learned());
    return q;
  };
  if (lr.objective == "noise") {
    const int64_t d = c.hidden_size, H = c.num_heads;
    auto ub_index = [&](int64_t l, int64_t h) { return static_cast<int>(1 + l * Hkv + h); };
    auto uc_index = [&](int64_t l, int64_t h) { return static_cast<int>(1 + (L + l) * Hkv + h); };
    // The sites in a fixed order: per layer the q/k/v input, the o input, the gate/up input (U_A and
    // U_B, as activations.enabled) and per KV head the K (U_C, with qk_rotation) and V (U_B) caches.
    struct Source {
      NoiseSite site;
      int64_t layer, head;  // head -1: a whole activation
      std::shared_ptr<GradientProbe> LayerProbes::*probe;
      std::vector<at::Tensor> x, g;
    };
    std::vector<Source> src;
    auto activation_site = [&](int64_t l, const char* name, LinearKind kind, std::shared_ptr<GradientProbe> LayerProbes::*probe) {
      NoiseSite s;
      s.name = strprintf("layer %" PRId64 " %s", l, name);
      s.high_mask = site_activation_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
      s.bits_low = act.bits_low, s.bits_high = act.bits_high, s.clip_ratio = act.clip_ratio;
      if (kind == LinearKind::kO) {
        for (int64_t h = 0; h < H; ++h) s.blocks.push_back({h * hd, hd, ub_index(l, h / G)});
      } else {
        s.blocks.push_back({0, d, 0});
      }
      src.push_back({std::move(s), l, -1, probe, {}, {}});
    };
    auto cache_site = [&](int64_t l, int64_t h, const char* name, double clip, int rotation,
                          std::shared_ptr<GradientProbe> LayerProbes::*probe) {
      NoiseSite s;
      s.name = strprintf("layer %" PRId64 " %s cache head %" PRId64, l, name, h);
      s.high_mask = high_mask_last(hd, layout.r_h);
      s.bits_low = kv.bits_low, s.bits_high = kv.bits_high, s.clip_ratio = clip;
      s.blocks.push_back({0, hd, rotation});
      src.push_back({std::move(s), l, h, probe, {}, {}});
    };
    for (int64_t l = 0; l < L; ++l) {
      if (act.enabled) {
        activation_site(l, "q/k/v input", LinearKind::kQ, &LayerProbes::attn);
        activation_site(l, "o_proj input", LinearKind::kO, &LayerProbes::o);
        activation_site(l, "gate/up input", LinearKind::kGate, &LayerProbes::mlp);
      }
      if (kv.enabled) {
        for (int64_t h = 0; h < Hkv; ++h) {
          if (!uc.empty()) cache_site(l, h, "K", kv.k_clip_ratio, uc_index(l, h), &LayerProbes::k);
          cache_site(l, h, "V", kv.v_clip_ratio, ub_index(l, h), &LayerProbes::v);
        }
      }
    }
    // Weights: per layer q, k, gate, up; fisher accumulated batch by batch (nothing per token kept).
    struct WeightSource {
      NoiseSite site;
      int64_t layer;
      LinearKind kind;
      std::shared_ptr<GradientProbe> LayerProbes::*input;
    };
    std::vector<WeightSource> wsrc;
    if (weight_noise) {
      const at::Tensor u0 = ua.u0.to(at::kFloat);  // U_A with its learned blocks at the identity
      for (int64_t l = 0; l < L; ++l) {
        for (const auto& [kind, name, input] : {std::tuple{LinearKind::kQ, "q_proj", &LayerProbes::attn},
                                               std::tuple{LinearKind::kK, "k_proj", &LayerProbes::attn},
                                               std::tuple{LinearKind::kGate, "gate_proj", &LayerProbes::mlp},
                                               std::tuple{LinearKind::kUp, "up_proj", &LayerProbes::mlp}}) {
          NoiseSite s;
          s.name = strprintf("layer %" PRId64 " %s weights", l, name);
          s.x = at::mm(base[l][kind].first, u0);  // [N, d]
          s.high_mask = site_weight_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
          s.bits_low = w.bits_low, s.bits_high = w.bits_high, s.clip_ratio = w.clip_ratio, s.symmetric = true;
          s.blocks.push_back({0, d, 0});
          s.fisher = at::zeros({s.x.size(0), 2}, s.x.options().dtype(at::kDouble));
          wsrc.push_back({std::move(s), l, kind, input});
        }
      }
    }
    if (src.empty() && wsrc.empty())
      throw ConfigError("rotation.learn.objective \"noise\" needs quantized activations, KV cache or weights in the loop "
                        "(rotation.learn.weights_in_loop \"rtn\"; the recipe has none)");
    // At most learn.tokens tokens, and at most kNoiseBytes of recorded activations and Fisher weights.
    int64_t bytes_per_token = 0;
    for (const Source& s : src) bytes_per_token += 4 * s.site.high_mask.numel() + 16;
    // (Weights alone keep nothing per token: only learn.tokens bounds them.)
    const int64_t token_budget =
        bytes_per_token == 0 ? lr.tokens : std::min(lr.tokens, std::max<int64_t>(T, kNoiseBytes / bytes_per_token));
    if (token_budget < lr.tokens && token_budget < n_train * T)
      log::info(strprintf("learn rotations: recording %" PRId64 " tokens (%.1f KiB each; the %.0f GiB cap of the noise objective)",
                          token_budget, bytes_per_token / 1024.0, kNoiseBytes / double(int64_t{1} << 30)));
    // Labels sampled from the fp model's own next-token distributions (seeded): the outer products
    // of the log-likelihood gradients then average to the Fisher information, the Hessian of
    // KL(fp ‖ ·) at the fp model.
    Rng label_rng = Rng::derive(seed, "learn-fisher", {lr.seed});
    const int64_t record_windows = std::min(n_train, (token_budget + T - 1) / T);
    for (int64_t w0 = 0; w0 < n_train && noise_tokens < token_budget; w0 += lr.batch) {
      const int64_t k = std::min({lr.batch, n_train - w0, (token_budget - noise_tokens + T - 1) / T});
      std::vector<int64_t> windows(k);
      for (int64_t i = 0; i < k; ++i) windows[i] = w0 + i;
      std::vector<LayerProbes> probes(L);
      const at::Tensor logits = logits_of(calib.index_select(0, at::tensor(windows, at::kLong)), false, &probes);  // [k, T, V]
      const int64_t V = logits.size(-1);
      at::Tensor labels;
      {
        c10::NoGradGuard no_grad;
        const at::Tensor cdf = at::softmax(logits.detach().to(at::kDouble), -1).cumsum(-1);  // [k, T, V]
        std::vector<double> u(k * T);
        for (double& x : u) x = label_rng.uniform();
        const at::Tensor target = at::tensor(u, at::kDouble).view({k, T, 1}).to(cdf.device()) * cdf.narrow(-1, V - 1, 1);
        labels = at::searchsorted(cdf, target).clamp_max(V - 1).reshape({-1});
      }
      at::nll_loss(at::log_softmax(logits, -1).reshape({-1, V}), labels, {}, at::Reduction::Sum).backward();
      for (Source& s : src) {
        const GradientProbe& p = *(probes[s.layer].*s.probe);
        auto rows = [&](const at::Tensor& t) {  // [k, T, K] or [k, Hkv, T, hd] -> [k·T, K]
          return (s.head < 0 ? t : t.select(1, s.head)).reshape({k * T, -1}).to(at::kFloat);
        };
        s.x.push_back(rows(p.x()));
        s.g.push_back(rows(p.grad()));
      }
      for (WeightSource& s : wsrc) {
        c10::NoGradGuard no_grad;
        const at::Tensor x = (probes[s.layer].*s.input)->x().reshape({k * T, -1});          // [kT, d]
        const at::Tensor g = probes[s.layer].out.at(s.kind)->grad().reshape({k * T, -1});  // [kT, N]
        // Σ_t g_tn² ‖x_t,part‖²: [N, kT] · [kT, 2]
        s.site.fisher += at::mm(g.to(at::kDouble).pow(2).t(), part_fisher(x, s.site.high_mask));
      }
      noise_tokens += k * T;
      const double elapsed = seconds_since(start);
      log::info(strprintf("learn rotations: recording %" PRId64 "/%" PRId64 " windows | %.0f tokens/s | ETA %.0f s", w0 + k, record_windows,
                          noise_tokens / elapsed, elapsed / (w0 + k) * (record_windows - w0 - k)));
    }
    for (Source& s : src) {
      s.site.x = at::cat(s.x, 0);
      s.site.fisher = part_fisher(at::cat(s.g, 0), s.site.high_mask);
      noise_sites.push_back(std::move(s.site));
    }
    for (WeightSource& s : wsrc) noise_sites.push_back(std::move(s.site));
    c10::NoGradGuard no_grad;
    const std::vector<at::Tensor> identity = learned_rotations();  // every learned block starts at I
    noise_start = expected_noise(noise_sites, identity).item<double>();
    log::info(strprintf("learn rotations: %zu sites recorded on %" PRId64 " tokens, expected noise %.4g per token (second-order KL estimate)",
                        noise_sites.size(), noise_tokens, noise_start / noise_tokens));
    if (!(noise_start > 0)) throw Error("learn rotations: the recorded sites carry no quantization noise (nothing to learn)");
    for (const NoiseSite& s : noise_sites) site_start.push_back(expected_noise({s}, identity).item<double>() / noise_tokens);
  }
  const double loss_before = fixed_loss();
  double best_loss = loss_before;
  int64_t best_step = 0;
  std::vector<at::Tensor> best = snapshot();
  nlohmann::json holdout_curve = nlohmann::json::array({nlohmann::json::array({0, loss_before})});
  if (n_hold) log::info(strprintf("learn rotations: %s on %" PRId64 " held-out windows before learning %.4f", measure, n_hold, loss_before));

  Rng rng = Rng::derive(seed, "learn", {lr.seed});
  const int64_t batch = std::min(lr.batch, n_train);
  nlohmann::json curve = nlohmann::json::array();
  for (int64_t step = 0; step < lr.steps; ++step) {
    // `batch` training windows drawn with replacement.
    std::vector<int64_t> pick(batch);
    for (auto& p : pick) p = std::min<int64_t>(static_cast<int64_t>(rng.uniform() * n_train), n_train - 1);
    for (SubspaceRotation* s : all)
      for (auto& r : s->r) r.mutable_grad() = at::Tensor();
    // "noise": relative to the start (1 at step 0), on every recorded token.
    at::Tensor loss = noise_sites.empty() ? loss_of(pick) : expected_noise(noise_sites, learned_rotations()) / noise_start;
    loss.backward();
    const double value = loss.item<double>();
    curve.push_back(value);
    double grad_norm2 = 0;
    {
      c10::NoGradGuard no_grad;
      for (SubspaceRotation* s : all) {
        for (size_t i = 0; i < s->r.size(); ++i) {
          at::Tensor x = s->r[i].detach();
          const at::Tensor g = s->r[i].grad();
          if (g.defined()) {
            grad_norm2 += g.pow(2).sum().item<double>();
            cayley_sgd_step(x, g, s->mom[i], lr.lr, lr.momentum);
          }
          s->r[i] = x.requires_grad_(true);
        }
      }
    }
    std::string held;
    if (n_hold && ((step + 1) % lr.eval_every == 0 || step + 1 == lr.steps)) {
      const double h = fixed_loss();
      holdout_curve.push_back({step + 1, h});
      if (h < best_loss) best_loss = h, best_step = step + 1, best = snapshot();
      held = strprintf(" | held-out %.4f (best %.4f at step %" PRId64 ")", h, best_loss, best_step);
    }
    const double elapsed = seconds_since(start);
    log::info(strprintf("learn rotations: step %" PRId64 "/%" PRId64 " | %s %.4f | |grad| %.3g%s | ETA %.0f s", step + 1, lr.steps,
                        lr.objective.c_str(), value, std::sqrt(grad_norm2), held.c_str(), elapsed / (step + 1) * (lr.steps - step - 1)));
  }
  if (n_hold) {  // early stopping: the rotations of the best held-out measurement
    size_t k = 0;
    for (SubspaceRotation* s : all)
      for (auto& x : s->r) x = best[k++].requires_grad_(true);
  }

  // Where the noise is, before and with the kept rotations: per site, per recorded token.
  nlohmann::json noise_report;
  if (!noise_sites.empty()) {
    c10::NoGradGuard no_grad;
    const std::vector<at::Tensor> q = learned_rotations();
    nlohmann::json sites = nlohmann::json::array();
    double after = 0;
    for (size_t i = 0; i < noise_sites.size(); ++i) {
      const double end = expected_noise({noise_sites[i]}, q).item<double>() / noise_tokens;
      after += end;
      sites.push_back({{"site", noise_sites[i].name}, {"before", site_start[i]}, {"after", end}});
    }
    noise_report = {{"tokens", noise_tokens}, {"expected_kl_per_token_before", noise_start / noise_tokens},
                    {"expected_kl_per_token_after", after}, {"sites", sites},
                    {"definition", std::string("second-order estimate of KL(fp || quantized model) per token from uniform rounding noise of each ") +
                                       "per-token step of the quantized activations and KV cache" +
                                       (weight_noise ? " and each per-channel step of the RTN q/k/gate/up weights" : "") +
                                       ", weighted by the Fisher information of each site's low and high parts"}};
  }
  const double loss_after = n_hold ? best_loss : fixed_loss();
  // The learned bases replace the random ones; the layers go back to disk (the weight stage reloads).
  double max_err = 0.0;
  {
    c10::NoGradGuard no_grad;
    auto take = [&](SubspaceRotation& s) {
      at::Tensor u = s.matrix().detach();
      max_err = std::max(max_err, orthogonality_error(u));
      return u;
    };
    R.u_a = take(ua);
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t h = 0; h < Hkv; ++h) R.u_b[l][h] = take(ub[l][h]);
      if (!uc.empty())
        for (int64_t h = 0; h < Hkv; ++h) R.u_c[l][h] = take(uc[l][h]);
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    DecoderLayer& Ly = m.layers()[l];
    Ly.qk_transform = Ly.k_cache_transform = Ly.v_cache_transform = Ly.down_input_transform = nullptr;
    m.unload_layer(l);
  }
  m.set_matmul_dtype(matmul_dtype);
  release_free_heap();
  const double seconds = seconds_since(start);
  const char* fixed_name = n_hold ? "held-out windows" : "the first training windows";
  log::info(strprintf("learn rotations: %" PRId64 " steps in %.1f s, %s on %s %.4f -> %.4f%s, orthogonality error %.2e",
                      lr.steps, seconds, measure, fixed_name, loss_before, loss_after,
                      n_hold ? strprintf(" (kept step %" PRId64 ")", best_step).c_str() : "", max_err));
  nlohmann::json report = {
      {"steps", lr.steps}, {"lr", lr.lr}, {"momentum", lr.momentum}, {"batch", batch}, {"seed", lr.seed},
      {"objective", lr.objective}, {"loss", curve}, {"fixed_windows", fixed_name}, {"fixed_windows_count", fixed.size()},
      {"fixed_windows_loss_before", loss_before}, {"fixed_windows_loss_after", loss_after},
      {"seconds", seconds}, {"orthogonality_error", max_err},
      {"weights_in_loop", lr.weights_in_loop},
      {"loss_definition", std::string(kl ? "mean over tokens of KL(fp model || fake-quantized model) of the next-token distributions"
                                         : "mean next-token cross-entropy of the fake-quantized model") +
                              (lr.weights_in_loop == "rtn" ? ", W/A/KV quantized (RTN weights)" : ", A/KV quantized (fp weights)")}};
  if (!noise_report.is_null()) {
    // The steps' "loss" is the noise objective; loss_definition stays that of the held-out figures.
    report["noise"] = noise_report;
    report["step_loss_definition"] = "expected quantization noise (noise.definition) relative to its value before learning";
  }
  if (n_hold) {
    report["holdout_windows"] = n_hold;
    report["holdout_loss"] = holdout_curve;  // [step, loss] pairs, step 0 = before learning
    report["kept_step"] = best_step;
  }
  return report;
}

}  // namespace resq::pipeline
