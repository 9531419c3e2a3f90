// The decoder's attention paths (reference, CPU bf16 products, libtorch's fused SDPA) behind one
// causal_attention() call; see attention.h.
#include "resq/model/attention.h"

#include <ATen/ATen.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "resq/common/error.h"
#include "resq/model/decoder.h"

// at::scaled_dot_product_attention exists from PyTorch 2.0; its `scale` argument from 2.1 and
// `enable_gqa` from 2.5. Debian 12's libtorch is 1.13, so CPU CI compiles the fallback only.
#if TORCH_VERSION_MAJOR >= 2
#define RESQ_HAVE_SDPA 1
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 5
#define RESQ_HAVE_SDPA_GQA 1
#endif
#endif

namespace resq {

const char* attention_path_name(AttentionPath path) {
  switch (path) {
    case AttentionPath::kReference: return "reference";
    case AttentionPath::kBf16Products: return "bf16-products";
    case AttentionPath::kFused: return "fused-sdpa";
  }
  return "?";
}

bool fused_attention_compiled() {
#if defined(RESQ_HAVE_SDPA)
  return true;
#else
  return false;
#endif
}

AttentionPath choose_attention_path(const at::Device& device, at::ScalarType dtype, at::ScalarType matmul_dtype) {
  if (matmul_dtype == at::kBFloat16 && device.is_cpu()) return AttentionPath::kBf16Products;
  if (device.is_cuda() && fused_attention_compiled() && (dtype == at::kFloat || dtype == at::kBFloat16)) {
    return AttentionPath::kFused;
  }
  return AttentionPath::kReference;
}

at::Tensor attention_mask(int64_t t, int64_t L, const std::optional<int64_t>& window, at::ScalarType stat_type,
                          const at::Device& device) {
  // Every layer of a forward asks for the same mask (RopeTables used to cache it): keep the last one
  // per thread. Callers only read it (baddbmm input, narrow, eq), never write into it.
  struct Key {
    int64_t t = -1, L = -1;
    std::optional<int64_t> window;
    at::ScalarType type = at::kFloat;
    at::Device device = at::kCPU;
    bool operator==(const Key& o) const {
      return t == o.t && L == o.L && window == o.window && type == o.type && device == o.device;
    }
  };
  thread_local Key last_key;
  thread_local at::Tensor last_mask;
  const Key key{t, L, window, stat_type, device};
  if (last_mask.defined() && key == last_key) return last_mask;
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  // distance[i][j] = (L - t + i) - j: key j is hidden when it lies in the query's future (< 0) or,
  // with a window, at least `window` positions back.
  at::Tensor distance = at::arange(L - t, L, long_opts).unsqueeze(1) - at::arange(0, L, long_opts).unsqueeze(0);
  at::Tensor hidden = distance < 0;
  if (window) hidden = at::logical_or(hidden, distance >= *window);
  last_mask = at::zeros({t, L}, at::TensorOptions().dtype(stat_type))
                  .masked_fill(hidden, -std::numeric_limits<double>::infinity())
                  .to(device);
  last_key = key;
  return last_mask;
}

at::Tensor masked_attention_rows(const at::Tensor& q3, const at::Tensor& k3, const at::Tensor& v3, const at::Tensor& mask,
                                 at::ScalarType dtype) {
  const int64_t R = q3.size(0), Tq = q3.size(1), hd = q3.size(2), L = k3.size(1);
  const auto stat_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out3 = at::empty({R, Tq, hd}, q3.options());
  const int64_t chunk = std::max<int64_t>(1, (int64_t{16} << 20) / std::max<int64_t>(1, Tq * L * 8));
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int64_t r0 = 0; r0 < R; r0 += chunk) {
    const int64_t rows = std::min(chunk, R - r0);
    at::Tensor scores = at::baddbmm(mask, q3.narrow(0, r0, rows).to(stat_type),
                                    k3.narrow(0, r0, rows).to(stat_type).transpose(1, 2), /*beta=*/1.0, scale);
    at::Tensor probs = at::softmax(scores, -1).to(dtype);
    out3.narrow(0, r0, rows).copy_(at::bmm(probs, v3.narrow(0, r0, rows)));
  }
  return out3;
}

namespace {

// Reference path. A chunk from position 0 (the full forward) repeats K/V per query head (HF
// repeat_kv) and runs B*H rows; a later chunk (incremental decoding) stacks the G query heads of a
// KV group against one copy of the group's keys instead of repeating the cache G times. The two
// forms are kept as they were measured and tested (the full forward's arithmetic is the one the
// quantizer calibrates with).
at::Tensor attention_reference(const at::Tensor& q, at::Tensor k, at::Tensor v, const AttentionSpec& spec) {
  const int64_t B = q.size(0), H = q.size(1), t = q.size(2), hd = q.size(3);
  const int64_t Hkv = k.size(1), L = k.size(2), G = H / Hkv;
  const auto stat_type = spec.dtype == at::kDouble ? at::kDouble : at::kFloat;
  if (t == L) {
    if (G > 1) {
      k = k.unsqueeze(2).expand({B, Hkv, G, L, hd}).reshape({B, H, L, hd});
      v = v.unsqueeze(2).expand({B, Hkv, G, L, hd}).reshape({B, H, L, hd});
    }
    at::Tensor mask = attention_mask(t, L, spec.window, stat_type, q.device()).unsqueeze(0);  // [1, t, L]
    at::Tensor out3 = masked_attention_rows(q.reshape({B * H, t, hd}), k.reshape({B * H, L, hd}),
                                            v.reshape({B * H, L, hd}), mask, spec.dtype);
    return out3.view({B, H, t, hd}).transpose(1, 2).reshape({B, t, H * hd});
  }
  // Rows (g, i) of KV group j: the mask repeats for the G heads.
  at::Tensor mask = attention_mask(t, L, spec.window, stat_type, q.device()).repeat({G, 1}).unsqueeze(0);  // [1, G*t, L]
  at::Tensor out3 = masked_attention_rows(q.reshape({B * Hkv, G * t, hd}), k.reshape({B * Hkv, L, hd}),
                                          v.reshape({B * Hkv, L, hd}), mask, spec.dtype);
  // [B, Hkv, G, t, hd] -> [B, t, Hkv, G, hd] = [B, t, H*hd] (head j*G + g)
  return out3.view({B, Hkv, G, t, hd}).permute({0, 3, 1, 2, 4}).reshape({B, t, H * hd});
}

// CPU bf16 products (float32 models): q [B, H, T, hd], k/v [B, Hkv, T, hd] float32 -> [B, T, H*hd].
at::Tensor attention_bf16_products(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const AttentionSpec& spec) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv;
  // Rows (t, g) of one KV group: the G query heads sharing KV head j, position-major, so a block of
  // query positions is one contiguous [Bq * G, hd] matrix and one GEMM serves the whole group.
  // qg [B, Hkv, T, G, hd], kb/vb [B, Hkv, T, hd], all bf16 contiguous.
  at::Tensor qg = q.reshape({B, Hkv, G, T, hd}).permute({0, 1, 3, 2, 4}).to(at::kBFloat16).contiguous();
  at::Tensor kb = k.to(at::kBFloat16).contiguous();
  at::Tensor vb = v.to(at::kBFloat16).contiguous();
  at::Tensor out = at::empty({B, T, Hkv, G, hd}, q.options());  // == [B, T, H*hd] (head j*G + g)
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  // Query blocks of Bq positions see keys [0, t1) only: the causal mask hides everything after, so
  // skipping those columns changes nothing (exp(-inf) = 0) and halves the work at T = 2048. Bq * G
  // rows x T columns of float32 scores stay a few MiB.
  const int64_t Bq = std::min<int64_t>(T, std::max<int64_t>(64, 1024 / G));
  at::Tensor mask = attention_mask(T, T, spec.window, at::kFloat, q.device());
  at::Tensor scores_buf = at::empty({Bq * G * T}, q.options());
  at::Tensor o_buf = at::empty({Bq * G, hd}, q.options());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < Hkv; ++j) {
      at::Tensor qj = qg[b][j], kj = kb[b][j], vj = vb[b][j];  // [T, G, hd], [T, hd], [T, hd]
      for (int64_t t0 = 0; t0 < T; t0 += Bq) {
        const int64_t rows = std::min(Bq, T - t0), t1 = t0 + rows;
        at::Tensor qa = qj.narrow(0, t0, rows).view({rows * G, hd});
        at::Tensor scores = scores_buf.narrow(0, 0, rows * G * t1).view({rows * G, t1});
        gemm_nt_bf16(qa, kj.narrow(0, 0, t1), scores, scale, 0.0f);
        scores.view({rows, G, t1}).add_(mask.narrow(0, t0, rows).narrow(1, 0, t1).unsqueeze(1));
        at::Tensor probs = at::softmax(scores, -1).to(at::kBFloat16);  // [rows*G, t1]
        at::Tensor o = o_buf.narrow(0, 0, rows * G);
        gemm_nn_bf16(probs, vj.narrow(0, 0, t1), o, 0.0f);
        out[b].narrow(0, t0, rows).select(1, j).copy_(o.view({rows, G, hd}));
      }
    }
  }
  return out.view({B, T, H * hd});
}

// libtorch's fused attention. is_causal is top-left aligned in SDPA, which is right only for a chunk
// that starts at position 0 (t == L); a later chunk gets an explicit boolean mask (true = visible),
// a single decode token none (every cached key is visible) unless a window hides some.
at::Tensor attention_fused(const at::Tensor& q, at::Tensor k, at::Tensor v, const AttentionSpec& spec) {
#if defined(RESQ_HAVE_SDPA)
  const int64_t B = q.size(0), H = q.size(1), t = q.size(2), hd = q.size(3);
  const int64_t Hkv = k.size(1), L = k.size(2), G = H / Hkv;
  const bool windowed = spec.window && *spec.window < L;
  const bool causal = t == L && !windowed;
  c10::optional<at::Tensor> mask;
  if (!causal && (t > 1 || windowed)) {
    mask = attention_mask(t, L, spec.window, at::kFloat, q.device()).eq(0);  // [t, L] bool
  }
#if defined(RESQ_HAVE_SDPA_GQA)
  at::Tensor out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, c10::nullopt, /*enable_gqa=*/G > 1);
#else
  if (G > 1) {
    k = k.unsqueeze(2).expand({B, Hkv, G, L, hd}).reshape({B, H, L, hd});
    v = v.unsqueeze(2).expand({B, Hkv, G, L, hd}).reshape({B, H, L, hd});
  }
  at::Tensor out = at::scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
#endif
  return out.transpose(1, 2).reshape({B, t, H * hd});  // [B, H, t, hd] -> [B, t, H*hd]
#else
  (void)q;
  (void)k;
  (void)v;
  (void)spec;
  throw UnsupportedError("attention: this libtorch (" TORCH_VERSION
                         ") has no scaled_dot_product_attention (PyTorch >= 2.0 needed for the fused path)");
#endif
}

}  // namespace

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionSpec& spec) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || !k.sizes().equals(v.sizes()) || q.size(0) != k.size(0) ||
      q.size(3) != k.size(3) || k.size(1) < 1 || q.size(1) % k.size(1) != 0 || q.size(2) > k.size(2)) {
    throw ShapeError("attention: expected q [B, H, t, hd] and k, v [B, Hkv, L, hd] with H a multiple of Hkv and "
                     "t <= L; got q " + std::string(c10::str(q.sizes())) + ", k " + std::string(c10::str(k.sizes())) +
                     ", v " + std::string(c10::str(v.sizes())));
  }
  switch (spec.path) {
    case AttentionPath::kFused: return attention_fused(q, k, v, spec);
    case AttentionPath::kBf16Products:
      if (q.size(2) == k.size(2) && q.scalar_type() == at::kFloat) return attention_bf16_products(q, k, v, spec);
      return attention_reference(q, k, v, spec);
    case AttentionPath::kReference: return attention_reference(q, k, v, spec);
  }
  return attention_reference(q, k, v, spec);
}

}  // namespace resq
