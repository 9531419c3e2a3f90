// Norm folding, rotations and their fusion into the weights (pipeline_parts.h; docs/QUANTIZE.md
// steps 1, 3 and 4): exact in float64, the rotated fp model reproduces the original logits.
#include <ATen/ATen.h>

#include <cstring>

#include "pipeline_parts.h"
#include "resq/common/error.h"
#include "resq/linalg/pca.h"
#include "resq/linalg/random.h"
#include "resq/transforms/online.h"

namespace resq::pipeline {

at::Tensor to_tensor(const MatrixXdR& m) {
  return at::from_blob(const_cast<double*>(m.data()), {m.rows(), m.cols()}, at::TensorOptions().dtype(at::kDouble))
      .clone();
}

namespace {

MatrixXdR to_eigen(const at::Tensor& t) {
  at::Tensor c = t.to(at::kDouble).contiguous().cpu();
  MatrixXdR m(c.size(0), c.size(1));
  std::memcpy(m.data(), c.data_ptr<double>(), sizeof(double) * c.numel());
  return m;
}

// The eigensolver of pca_from_covariance as torch's eigh (float64) on `device`: a [n, n] symmetric
// (so its column-major buffer is also the row-major matrix) -> eigenvectors in a's columns, ascending
// eigenvalues in w. torch's V [n, n] holds eigenvector j in column j; a column-major a(i, j) is
// a.data()[j n + i], i.e. Vᵀ in row-major order.
SymmetricEigensolver torch_eigensolver(const at::Device& device) {
  return [device](Eigen::MatrixXd& a, Eigen::VectorXd& w) -> int {
    const int64_t n = a.rows();
    const at::Tensor A = at::from_blob(a.data(), {n, n}, at::TensorOptions().dtype(at::kDouble)).to(device);
    auto [values, vectors] = at::linalg_eigh(A, "L");
    const at::Tensor vt = vectors.t().contiguous().cpu();
    const at::Tensor vals = values.contiguous().cpu();
    if (!at::isfinite(vt).all().item<bool>() || !at::isfinite(vals).all().item<bool>()) return 1;
    std::memcpy(a.data(), vt.data_ptr<double>(), sizeof(double) * static_cast<size_t>(n * n));
    w.resize(n);
    std::memcpy(w.data(), vals.data_ptr<double>(), sizeof(double) * static_cast<size_t>(n));
    return 0;
  };
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

}  // namespace

DenseLinear& dense(const std::shared_ptr<Linear>& linear, const std::string& what) {
  auto* d = dynamic_cast<DenseLinear*>(linear.get());
  if (!d) throw Error(what + ": expected a dense linear at this stage of the pipeline");
  return *d;
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

// ---------------------------------------------------------------------------- rotations


Rotations build_rotations(const Decoder& m, const Recipe& recipe, const CovarianceObserver* cov, uint64_t seed,
                          int64_t r, int64_t r_h, const ComputePlan& plan) {
  const ModelConfig& c = m.config();
  const auto& rot = recipe.rotation;
  Rotations out;
  if (rot.method == "none") return out;
  const bool pca = rot.method == "resq";
  // spectrum (PCA only): the subspace's undamped eigenvalues, largest first, with the captured fraction.
  auto basis = [&](const at::Tensor& cov, int64_t rr, Rng rng, double* captured, nlohmann::json* spectrum) {
    if (!pca) return to_tensor(randomized_hadamard(cov.size(0), rng));
    const PcaResult p = pca_from_covariance(to_eigen(cov), rot.pca_damping,
                                            plan.generic ? torch_eigensolver(plan.device) : SymmetricEigensolver());
    if (captured) *captured = captured_variance_fraction(p, rr);
    std::vector<double> eig;
    for (int64_t i = p.eigenvalues.size() - 1; i >= 0; --i) eig.push_back(std::max(0.0, p.eigenvalues[i] - p.damping));
    *spectrum = {{"eigenvalues", eig}, {"rank", rr}, {"captured", captured ? *captured : 0.0}};
    return to_tensor(resq_basis(p, rr, rng, /*rotate=*/true));
  };
  double captured_a = 0.0;
  const auto d = c.hidden_size, hd = c.head_dim;
  nlohmann::json spectrum_a, spectra_b = nlohmann::json::array(), spectra_c = nlohmann::json::array();
  out.u_a = basis(pca ? cov->cov_a : at::zeros({d, d}, at::kDouble), r, Rng::derive(seed, "U_A"), &captured_a, &spectrum_a);
  double sum_b = 0, sum_c = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<at::Tensor> heads;
    for (int64_t h = 0; h < c.num_kv_heads; ++h) {
      double captured = 0;
      nlohmann::json spectrum;
      heads.push_back(basis(pca ? cov->cov_v[l][h] : at::zeros({hd, hd}, at::kDouble), r_h,
                            Rng::derive(seed, "U_B", {l, h}), &captured, &spectrum));
      sum_b += captured;
      if (pca) spectra_b.push_back({{"layer", l}, {"kv_head", h}, {"spectrum", spectrum}});
    }
    out.u_b.push_back(heads);
    if (rot.qk_rotation) {
      // One U_C per KV head: a query head shares its KV head's (q·U)(k·U)ᵀ = q·kᵀ. The randomized
      // Hadamard (no PCA) is the same for every head of a layer, as QuaRot's.
      std::vector<at::Tensor> heads_c;
      for (int64_t h = 0; h < c.num_kv_heads; ++h) {
        double captured = 0;
        nlohmann::json spectrum;
        heads_c.push_back(basis(pca ? cov->cov_k[l][h] : at::zeros({hd, hd}, at::kDouble), r_h,
                                pca ? Rng::derive(seed, "U_C", {l, h}) : Rng::derive(seed, "U_C", {l}), &captured, &spectrum));
        sum_c += captured;
        if (pca) spectra_c.push_back({{"layer", l}, {"kv_head", h}, {"spectrum", spectrum}});
      }
      out.u_c.push_back(heads_c);
    }
  }
  if (rot.online_down_hadamard) {
    Rng rng = Rng::derive(seed, "U_D");
    out.u_d = make_online_hadamard(c.intermediate_size, rng, /*random_signs=*/true);
  }
  // The fusions run where the weights are.
  if (!plan.device.is_cpu()) {
    out.u_a = out.u_a.to(plan.device);
    for (auto& heads : out.u_b)
      for (auto& u : heads) u = u.to(plan.device);
    for (auto& heads : out.u_c)
      for (auto& u : heads) u = u.to(plan.device);
  }
  if (pca) {
    out.spectra = {{"U_A_captured_variance_top_r", captured_a},
                   {"U_B_captured_variance_top_r_mean", sum_b / (c.num_layers * c.num_kv_heads)},
                   {"U_C_captured_variance_top_r_mean", rot.qk_rotation ? sum_c / (c.num_layers * c.num_kv_heads) : 0.0},
                   {"r", r},
                   {"r_h", r_h},
                   // Per subspace: undamped eigenvalues (largest first), rank kept in 8 bits, captured fraction.
                   {"U_A", spectrum_a},
                   {"U_B", spectra_b},
                   {"U_C", spectra_c}};
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
void fuse_layer(Decoder& m, int64_t l, const Rotations& R, bool generic) {
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
      if (generic || !wd.device().is_cpu()) {
        wd = apply_online_hadamard_torch(*R.u_d, wd);
      } else {
        wd = wd.contiguous();
        apply_online_hadamard(*R.u_d, wd.data_ptr<double>(), wd.size(0));
      }
      L.down_input_transform = std::make_shared<OnlineHadamardTransform>(*R.u_d);
    }
    set_dense(L.down, wd, bd, dt);
    if (!R.u_c.empty()) L.qk_transform = std::make_shared<MatrixTransform>(at::stack(R.u_c[l]).to(dt));
  }
}

}  // namespace resq::pipeline
