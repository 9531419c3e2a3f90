// Learned rotations inside the ResQ subspaces (recipe rotation.learn, docs/QUANTIZE.md "Learned
// rotations"): Cayley SGD on the end-to-end cross-entropy of the fake-quantized model.
#include "learned_rotation.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <map>

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

// x with the forward value of q(x) and the gradient of the identity (straight-through estimator).
at::Tensor straight_through(const at::Tensor& x, const at::Tensor& quantized) { return x + (quantized - x).detach(); }

// A TensorTransform (KV-cache quantizer) applied with a straight-through gradient.
class StraightThroughTransform : public TensorTransform {
 public:
  explicit StraightThroughTransform(std::shared_ptr<TensorTransform> t) : t_(std::move(t)) {}
  at::Tensor apply(const at::Tensor& x) const override { return straight_through(x, t_->apply(x.detach())); }

 private:
  std::shared_ptr<TensorTransform> t_;
};

// The linear of a fake-quantized model during learning: weight [out, in] (a function of the
// rotations: it carries their autograd graph), RTN-quantized with a straight-through gradient, and its
// input fake-quantized per token the same way. x [..., in] -> [..., out].
class StraightThroughLinear : public Linear {
 public:
  StraightThroughLinear(at::Tensor weight, at::Tensor bias, std::shared_ptr<TensorTransform> input_quant)
      : weight_(std::move(weight)), bias_(std::move(bias)), input_quant_(std::move(input_quant)) {}
  at::Tensor forward(const at::Tensor& x) const override {
    const at::Tensor xq = input_quant_ ? straight_through(x, input_quant_->apply(x.detach())) : x;
    return bias_.defined() ? at::linear(xq, weight_, bias_) : at::linear(xq, weight_);
  }
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  std::string implementation() const override { return "learning"; }

 private:
  at::Tensor weight_, bias_;
  std::shared_ptr<TensorTransform> input_quant_;
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
      r.push_back(at::eye(size, at::kDouble).requires_grad_(true));
      mom.push_back(at::zeros({size, size}, at::kDouble));
    }
  }
  at::Tensor matrix() const { return at::mm(u0, r.size() == 1 ? r[0] : at::block_diag(r)); }
};

double orthogonality_error(const at::Tensor& u) {
  return (at::mm(u.t(), u) - at::eye(u.size(0), at::kDouble)).norm().item<double>();
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
  const at::Tensor eye = at::eye(x.size(0), at::kDouble);
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
  at::Tensor u_d;
  if (R.u_d) {
    const MatrixXdR t = online_hadamard_dense(*R.u_d);
    u_d = at::empty({t.rows(), t.cols()}, at::kDouble);
    std::memcpy(u_d.data_ptr<double>(), t.data(), sizeof(double) * t.size());
    u_d = u_d.to(at::kFloat);
  }

  SubspaceRotation ua(R.u_a, layout.r);
  std::vector<std::vector<SubspaceRotation>> ub(L);
  std::vector<SubspaceRotation> uc;
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t h = 0; h < Hkv; ++h) ub[l].emplace_back(R.u_b[l][h], layout.r_h);
    if (!R.u_c.empty()) uc.emplace_back(R.u_c[l], layout.r_h);
  }
  std::vector<SubspaceRotation*> all{&ua};
  for (auto& v : ub)
    for (auto& s : v) all.push_back(&s);
  for (auto& s : uc) all.push_back(&s);

  const auto& w = recipe.weights;
  const auto& act = recipe.activations;
  const auto& kv = recipe.kv;
  auto weight_q = [&](const at::Tensor& wt, LinearKind kind) {
    if (w.method == "none") return wt;
    const at::Tensor mask = site_weight_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
    return straight_through(wt, rtn_quantize_weight(wt.detach(), mask, w.bits_low, w.bits_high, w.clip_ratio, false).dequant);
  };
  auto input_q = [&](LinearKind kind) -> std::shared_ptr<TensorTransform> {
    if (!act.enabled) return nullptr;
    const at::Tensor mask = site_activation_high_mask(layout.sites.at(static_cast<format::SiteKind>(kind)));
    return std::make_shared<ActivationFakeQuant>(mask, act.bits_low, act.bits_high, act.clip_ratio);
  };
  auto install = [&](std::shared_ptr<Linear>& lin, LinearKind kind, const at::Tensor& wt, const at::Tensor& b) {
    lin = std::make_shared<StraightThroughLinear>(weight_q(wt, kind), b, input_q(kind));
  };

  // The fake-quantized model's mean next-token cross-entropy on ids [B, T] with the current rotations.
  const RopeTables rope = m.rope_tables(T);
  auto loss_of = [&](const at::Tensor& ids) {
    const at::Tensor a = ua.matrix().to(at::kFloat);  // [d, d]
    at::Tensor h = at::mm(at::embedding(embed, ids).reshape({-1, c.hidden_size}), a).view({ids.size(0), T, -1});
    for (int64_t l = 0; l < L; ++l) {
      DecoderLayer& Ly = m.layers()[l];
      auto& b = base[l];
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
      Ly.qk_transform = uc.empty() ? nullptr : std::make_shared<MatrixTransform>(uc[l].matrix().to(at::kFloat));
      if (kv.enabled) {
        Ly.k_cache_transform = std::make_shared<StraightThroughTransform>(
            std::make_shared<KvFakeQuant>(hd, layout.r_h, kv.bits_low, kv.bits_high, kv.k_clip_ratio));
        Ly.v_cache_transform = std::make_shared<StraightThroughTransform>(
            std::make_shared<KvFakeQuant>(hd, layout.r_h, kv.bits_low, kv.bits_high, kv.v_clip_ratio));
      }
      h = m.run_layer(l, h, rope);
    }
    const at::Tensor x = rms_norm(h, m.final_norm_weight.to(at::kFloat), c.rms_norm_eps);  // final norm folded: ones
    const at::Tensor logits = at::linear(x, at::mm(lm_head, a));                          // [B, T, V]
    const int64_t V = logits.size(-1);
    return at::nll_loss(at::log_softmax(logits.narrow(1, 0, T - 1).reshape({-1, V}), -1),
                        ids.narrow(1, 1, T - 1).reshape({-1}));
  };

  // The loss on fixed calibration windows (the first min(N, 16)) before and after learning, in chunks
  // of `batch`: the per-step losses are of different random windows and too noisy to compare.
  auto fixed_loss = [&] {
    c10::NoGradGuard no_grad;
    const int64_t n = std::min<int64_t>(N, 16);
    double sum = 0;
    for (int64_t s0 = 0; s0 < n; s0 += lr.batch) {
      const int64_t k = std::min(lr.batch, n - s0);
      sum += loss_of(calib.narrow(0, s0, k)).item<double>() * k;
    }
    return sum / n;
  };
  const double loss_before = fixed_loss();
  Rng rng = Rng::derive(seed, "learn", {lr.seed});
  const int64_t batch = std::min(lr.batch, N);
  nlohmann::json curve = nlohmann::json::array();
  for (int64_t step = 0; step < lr.steps; ++step) {
    // `batch` windows drawn with replacement from the calibration windows.
    std::vector<int64_t> pick(batch);
    for (auto& p : pick) p = static_cast<int64_t>(rng.uniform() * N);
    const at::Tensor ids = calib.index_select(0, at::tensor(pick, at::kLong));
    for (SubspaceRotation* s : all)
      for (auto& r : s->r) r.mutable_grad() = at::Tensor();
    at::Tensor loss = loss_of(ids);
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
    const double elapsed = seconds_since(start);
    log::info(strprintf("learn rotations: step %" PRId64 "/%" PRId64 " | loss %.4f | |grad| %.3g | ETA %.0f s", step + 1, lr.steps, value, std::sqrt(grad_norm2),
                        elapsed / (step + 1) * (lr.steps - step - 1)));
  }

  const double loss_after = fixed_loss();
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
      if (!uc.empty()) R.u_c[l] = take(uc[l]);
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
  log::info(strprintf("learn rotations: %" PRId64 " steps in %.1f s, loss on fixed windows %.4f -> %.4f, orthogonality error %.2e",
                      lr.steps, seconds, loss_before, loss_after, max_err));
  return {{"steps", lr.steps}, {"lr", lr.lr}, {"momentum", lr.momentum}, {"batch", batch}, {"seed", lr.seed},
          {"loss", curve}, {"fixed_windows_loss_before", loss_before}, {"fixed_windows_loss_after", loss_after},
          {"seconds", seconds}, {"orthogonality_error", max_err},
          {"loss_definition", "mean next-token cross-entropy of the W/A/KV fake-quantized model (RTN weights)"}};
}

}  // namespace resq::pipeline
