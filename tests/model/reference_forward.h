// A deliberately naive float64 forward pass written from the HuggingFace Llama/Qwen2 definitions with
// plain loops (no torch, no code shared with resq's decoder): the independent oracle for decoder tests.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "resq/io/safetensors.h"
#include "resq/model/config.h"

namespace resq::test {

class ReferenceModel {
 public:
  ReferenceModel(const ModelConfig& c, const TensorStore& store) : c_(c), store_(store) {}

  // ids [T] -> logits [T][vocab]
  std::vector<std::vector<double>> forward(const std::vector<int64_t>& ids) const {
    const int64_t T = ids.size(), d = c_.hidden_size, H = c_.num_heads, Hkv = c_.num_kv_heads, hd = c_.head_dim;
    const auto emb = load("model.embed_tokens.weight");
    std::vector<std::vector<double>> h(T, std::vector<double>(d));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < d; ++i) h[t][i] = emb[ids[t] * d + i];
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      auto x = norm(h, load(p + "input_layernorm.weight"));
      auto q = linear(x, p + "self_attn.q_proj", c_.qkv_bias);
      auto k = linear(x, p + "self_attn.k_proj", c_.qkv_bias);
      auto v = linear(x, p + "self_attn.v_proj", c_.qkv_bias);
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t hh = 0; hh < H; ++hh) rope(&q[t][hh * hd], t);
        for (int64_t hh = 0; hh < Hkv; ++hh) rope(&k[t][hh * hd], t);
      }
      std::vector<std::vector<double>> attn(T, std::vector<double>(H * hd, 0.0));
      for (int64_t hh = 0; hh < H; ++hh) {
        const int64_t kvh = hh / (H / Hkv);
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> s(t + 1);
          double mx = -1e300;
          for (int64_t u = 0; u <= t; ++u) {
            double dot = 0;
            for (int64_t e = 0; e < hd; ++e) dot += q[t][hh * hd + e] * k[u][kvh * hd + e];
            s[u] = dot / std::sqrt(static_cast<double>(hd));
            mx = std::max(mx, s[u]);
          }
          double z = 0;
          for (auto& val : s) z += (val = std::exp(val - mx));
          for (int64_t u = 0; u <= t; ++u)
            for (int64_t e = 0; e < hd; ++e) attn[t][hh * hd + e] += s[u] / z * v[u][kvh * hd + e];
        }
      }
      auto o = linear(attn, p + "self_attn.o_proj", c_.o_bias);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < d; ++i) h[t][i] += o[t][i];
      auto y = norm(h, load(p + "post_attention_layernorm.weight"));
      auto g = linear(y, p + "mlp.gate_proj", c_.mlp_bias);
      auto u = linear(y, p + "mlp.up_proj", c_.mlp_bias);
      for (int64_t t = 0; t < T; ++t)
        for (size_t i = 0; i < g[t].size(); ++i) g[t][i] = g[t][i] / (1.0 + std::exp(-g[t][i])) * u[t][i];
      auto down = linear(g, p + "mlp.down_proj", c_.mlp_bias);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < d; ++i) h[t][i] += down[t][i];
    }
    auto x = norm(h, load("model.norm.weight"));
    return linear(x, c_.tie_word_embeddings ? "model.embed_tokens" : "lm_head", false);
  }

 private:
  std::vector<double> load(const std::string& name) const {
    const auto& view = store_.get(name);
    std::vector<double> out(view.numel());
    tensor_to_float64(view, out.data());
    return out;
  }
  std::vector<std::vector<double>> norm(const std::vector<std::vector<double>>& x, const std::vector<double>& w) const {
    auto out = x;
    for (auto& row : out) {
      double ss = 0;
      for (double v : row) ss += v * v;
      const double inv = 1.0 / std::sqrt(ss / row.size() + c_.rms_norm_eps);
      for (size_t i = 0; i < row.size(); ++i) row[i] = row[i] * inv * w[i];
    }
    return out;
  }
  std::vector<std::vector<double>> linear(const std::vector<std::vector<double>>& x, const std::string& name,
                                          bool bias) const {
    const auto& view = store_.get(name + ".weight");
    const int64_t out_f = view.shape[0], in_f = view.shape[1];
    const auto w = load(name + ".weight");
    std::vector<double> b(out_f, 0.0);
    if (bias) b = load(name + ".bias");
    std::vector<std::vector<double>> y(x.size(), std::vector<double>(out_f));
    for (size_t t = 0; t < x.size(); ++t)
      for (int64_t o = 0; o < out_f; ++o) {
        double acc = b[o];
        for (int64_t i = 0; i < in_f; ++i) acc += w[o * in_f + i] * x[t][i];
        y[t][o] = acc;
      }
    return y;
  }
  // rotate_half RoPE on one head vector of length head_dim at position t (no scaling).
  void rope(double* v, int64_t t) const {
    const int64_t hd = c_.head_dim, half = hd / 2;
    std::vector<double> out(hd);
    for (int64_t i = 0; i < hd; ++i) {
      const int64_t fi = i % half;
      const double angle = t / std::pow(c_.rope_theta, 2.0 * fi / hd);
      const double rot = i < half ? -v[i + half] : v[i - half];
      out[i] = v[i] * std::cos(angle) + rot * std::sin(angle);
    }
    for (int64_t i = 0; i < hd; ++i) v[i] = out[i];
  }

  const ModelConfig& c_;
  const TensorStore& store_;
};

}  // namespace resq::test
