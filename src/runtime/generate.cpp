// Incremental decoding with a persistent (packed 4/8-bit or float) KV cache, token sampling and the
// batch-1 generation loop of `resq generate`. The layer arithmetic mirrors Decoder::run_layer
// (src/model/decoder.cpp), re-expressed for a query chunk at absolute positions against a cache.
#include "resq/runtime/generate.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "resq/common/error.h"
#include "resq/runtime/packed_model.h"

namespace resq {

namespace {

// HF rotate_half: [x1, x2] -> [-x2, x1] over the last dimension split in halves (as run_layer).
at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// Appends src's rows after dst's (same K4 / K8): the row-major layouts simply concatenate.
void append_rows(cpu::QuantizedActivations& dst, const cpu::QuantizedActivations& src) {
  if (dst.M == 0) {
    dst.K4 = src.K4;
    dst.K8 = src.K8;
  } else if (dst.K4 != src.K4 || dst.K8 != src.K8) {
    throw ShapeError("DecodeSession: packed KV rows of different widths cannot be appended");
  }
  auto cat = [](auto& a, const auto& b) { a.insert(a.end(), b.begin(), b.end()); };
  cat(dst.xq4, src.xq4);
  cat(dst.xq8, src.xq8);
  cat(dst.sx4, src.sx4);
  cat(dst.zx4, src.zx4);
  cat(dst.sx8, src.sx8);
  cat(dst.zx8, src.zx8);
  dst.M += src.M;
}

// Keeps the first `rows` rows (rollback of a failed step).
void truncate_rows(cpu::QuantizedActivations& q, int64_t rows) {
  if (rows >= q.M) return;
  const auto r = static_cast<size_t>(rows);
  q.xq4.resize(r * static_cast<size_t>(format::packed4_row_bytes(q.K4)));
  q.xq8.resize(r * static_cast<size_t>(q.K8));
  q.sx4.resize(r);
  q.zx4.resize(r);
  q.sx8.resize(r);
  q.zx8.resize(r);
  q.M = rows;
}

// Attention of a query chunk at absolute positions [pos0, pos0 + t) to keys [0, L):
// q [B, H, t, hd], k/v [B, Hkv, L, hd] (compute dtype) -> [B, t, H*hd]. Same arithmetic as
// run_layer's reference attention: scores = mask + q·kᵀ/√hd (one baddbmm) in float32 (float64 for
// float64 models), softmax, probabilities cast to the compute dtype, · v. GQA: KV head j serves
// query heads [j*G, (j+1)*G) (HF repeat_kv); the G heads' query rows are stacked against one copy
// of the group's keys instead of repeating the cache G times.
at::Tensor chunk_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t pos0,
                           const std::optional<int64_t>& window, at::ScalarType dtype) {
  const int64_t B = q.size(0), H = q.size(1), t = q.size(2), hd = q.size(3);
  const int64_t Hkv = k.size(1), L = k.size(2), G = H / Hkv;
  const auto stat_type = dtype == at::kDouble ? at::kDouble : at::kFloat;
  // Additive mask [t, L]: key j is visible from query i (absolute position pos0 + i) when j <= pos0 + i
  // and, with a sliding window, pos0 + i - j < window; -inf elsewhere. Repeated for the G heads.
  const auto long_opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor distance = (at::arange(pos0, pos0 + t, long_opts).unsqueeze(1) - at::arange(0, L, long_opts).unsqueeze(0));
  at::Tensor hidden = distance < 0;
  if (window) hidden = at::logical_or(hidden, distance >= *window);
  at::Tensor mask = at::zeros({t, L}, at::TensorOptions().dtype(stat_type))
                        .masked_fill(hidden, -std::numeric_limits<double>::infinity())
                        .repeat({G, 1})
                        .to(q.device())
                        .unsqueeze(0);  // [1, G*t, L]
  // Rows (g, i) of KV group j against one copy of the group's keys.
  at::Tensor out3 = masked_attention_rows(q.reshape({B * Hkv, G * t, hd}), k.reshape({B * Hkv, L, hd}),
                                          v.reshape({B * Hkv, L, hd}), mask, dtype);
  // [B, Hkv, G, t, hd] -> [B, t, Hkv, G, hd] = [B, t, H*hd] (head j*G + g)
  return out3.view({B, Hkv, G, t, hd}).permute({0, 3, 1, 2, 4}).reshape({B, t, H * hd});
}

}  // namespace

// ------------------------------------------------------------------ the per-layer cache

struct DecodeSession::Cache {
  std::shared_ptr<const PackedKvCacheQuant> packed;  // non-null: rows stored packed
  std::shared_ptr<TensorTransform> transform;        // otherwise applied before storing (null = none)
  cpu::QuantizedActivations rows;                    // packed: [length * B * Hkv rows] (position, b, h)
  at::Tensor dense;                                  // otherwise [B, Hkv, capacity, hd]
  int64_t length = 0;                                // cached positions
  int64_t B = 0, Hkv = 0, hd = 0;

  // x [B, Hkv, t, hd] (compute dtype, after RoPE / qk_transform for K) -> appended at [length, length + t).
  void append(const at::Tensor& x) {
    B = x.size(0);
    Hkv = x.size(1);
    hd = x.size(3);
    const int64_t t = x.size(2);
    if (packed) {
      // One row per (token, head), token-major so that a step's rows append contiguously.
      at::Tensor rows_f = x.to(at::kCPU, at::kFloat).permute({2, 0, 1, 3}).contiguous();  // [t, B, Hkv, hd]
      append_rows(rows, packed->pack(rows_f.data_ptr<float>(), t * B * Hkv));
    } else {
      at::Tensor y = transform ? transform->apply(x) : x;
      const int64_t need = length + t;
      if (!dense.defined() || dense.size(2) < need) {
        // Geometric growth: appending one token at a time stays amortized O(1) copies per value.
        const int64_t capacity = std::max<int64_t>({need, 16, dense.defined() ? 2 * dense.size(2) : 0});
        at::Tensor grown = at::empty({B, Hkv, capacity, hd}, y.options());
        if (length > 0) grown.narrow(2, 0, length).copy_(dense.narrow(2, 0, length));
        dense = grown;
      }
      dense.narrow(2, length, t).copy_(y);
    }
    length += t;
  }

  // -> [B, Hkv, length, hd] in `dtype` on `device` (packed rows dequantized: s * (q - z)).
  at::Tensor read(at::ScalarType dtype, at::Device device) const {
    if (!packed) return dense.narrow(2, 0, length);
    at::Tensor out = at::empty({length, B, Hkv, hd}, at::TensorOptions().dtype(at::kFloat));
    packed->unpack(rows, out.data_ptr<float>());
    return out.permute({1, 2, 0, 3}).to(device, dtype);
  }

  void truncate(int64_t len) {
    if (len >= length) return;
    if (packed) truncate_rows(rows, len * B * Hkv);
    length = len;
  }

  int64_t bytes() const {
    if (packed) {
      return static_cast<int64_t>(rows.xq4.size() + rows.xq8.size() +
                                  sizeof(float) * (rows.sx4.size() + rows.sx8.size()) +
                                  sizeof(int32_t) * (rows.zx4.size() + rows.zx8.size()));
    }
    return dense.defined() ? B * Hkv * length * hd * static_cast<int64_t>(dense.element_size()) : 0;
  }
};

// ------------------------------------------------------------------ DecodeSession

DecodeSession::DecodeSession(const Decoder& decoder) : decoder_(&decoder) {
  const ModelConfig& c = decoder.config();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const DecoderLayer& layer = decoder.layers()[l];
    for (auto [transform, caches] : {std::make_pair(layer.k_cache_transform, &k_cache_),
                                     std::make_pair(layer.v_cache_transform, &v_cache_)}) {
      auto cache = std::make_unique<Cache>();
      cache->packed = std::dynamic_pointer_cast<const PackedKvCacheQuant>(transform);
      if (cache->packed && cache->packed->head_dim() != c.head_dim) {
        throw ShapeError("DecodeSession: layer " + std::to_string(l) + "'s packed KV cache has head_dim " +
                         std::to_string(cache->packed->head_dim()) + ", the model " + std::to_string(c.head_dim));
      }
      if (!cache->packed) cache->transform = transform;
      caches->push_back(std::move(cache));
    }
  }
}

DecodeSession::~DecodeSession() = default;
DecodeSession::DecodeSession(DecodeSession&&) noexcept = default;

int64_t DecodeSession::max_positions() const { return decoder_->config().max_position_embeddings; }

void DecodeSession::reset() {
  for (auto* caches : {&k_cache_, &v_cache_}) {
    for (auto& cache : *caches) {
      cache->rows = cpu::QuantizedActivations{};
      cache->dense = at::Tensor();
      cache->length = 0;
    }
  }
  position_ = 0;
  batch_ = 0;
}

void DecodeSession::reserve(int64_t length) {
  if (length > max_positions()) {
    throw ShapeError("DecodeSession: " + std::to_string(length) + " positions exceed the model's max_position_embeddings (" +
                     std::to_string(max_positions()) + ")");
  }
  ensure_rope(length);
}

void DecodeSession::ensure_rope(int64_t length) {
  if (length <= rope_len_) return;
  // Decoder::rope_tables(n) also builds its n x n causal mask: grow geometrically (or to what
  // reserve() asked for) so that a generation recomputes the tables O(log n) times.
  const int64_t n = std::min(max_positions(), std::max<int64_t>({length, 2 * rope_len_, 64}));
  const RopeTables tables = decoder_->rope_tables(n);
  cos_ = tables.cos;  // [n, hd], compute dtype, the decoder's device
  sin_ = tables.sin;
  rope_len_ = n;
}

bool DecodeSession::packed_cache(int64_t layer) const {
  return static_cast<bool>(k_cache_.at(static_cast<size_t>(layer))->packed);
}

const cpu::QuantizedActivations& DecodeSession::packed_keys(int64_t layer) const {
  const Cache& c = *k_cache_.at(static_cast<size_t>(layer));
  if (!c.packed) throw Error("DecodeSession: layer " + std::to_string(layer) + "'s K cache is not packed");
  return c.rows;
}

const cpu::QuantizedActivations& DecodeSession::packed_values(int64_t layer) const {
  const Cache& c = *v_cache_.at(static_cast<size_t>(layer));
  if (!c.packed) throw Error("DecodeSession: layer " + std::to_string(layer) + "'s V cache is not packed");
  return c.rows;
}

at::Tensor DecodeSession::cached_keys(int64_t layer) const {
  return k_cache_.at(static_cast<size_t>(layer))->read(decoder_->dtype(), decoder_->device());
}

at::Tensor DecodeSession::cached_values(int64_t layer) const {
  return v_cache_.at(static_cast<size_t>(layer))->read(decoder_->dtype(), decoder_->device());
}

KvCacheBytes DecodeSession::cache_bytes() const {
  const ModelConfig& c = decoder_->config();
  KvCacheBytes b;
  b.layers = c.num_layers;
  for (size_t l = 0; l < k_cache_.size(); ++l) {
    b.stored += k_cache_[l]->bytes() + v_cache_[l]->bytes();
    if (k_cache_[l]->packed && v_cache_[l]->packed) ++b.packed_layers;
  }
  const int64_t values = 2 * c.num_layers * batch_ * c.num_kv_heads * position_ * c.head_dim;
  b.fp32 = values * 4;
  b.bf16 = values * 2;
  return b;
}

at::Tensor DecodeSession::run_layer(int64_t index, const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin) {
  // hidden [B, t, d] at positions [position_, position_ + t) -> [B, t, d]; appends this layer's K/V.
  const DecoderLayer& layer = decoder_->layers()[static_cast<size_t>(index)];
  const ModelConfig& c = decoder_->config();
  const int64_t B = hidden.size(0), t = hidden.size(1);
  const int64_t H = c.num_heads, Hkv = c.num_kv_heads, hd = c.head_dim;

  // ---- attention block
  at::Tensor x = rms_norm(hidden, layer.input_norm_weight, c.rms_norm_eps);
  at::Tensor q = layer.q->forward(x).view({B, t, H, hd}).transpose(1, 2);    // [B, H, t, hd]
  at::Tensor k = layer.k->forward(x).view({B, t, Hkv, hd}).transpose(1, 2);  // [B, Hkv, t, hd]
  at::Tensor v = layer.v->forward(x).view({B, t, Hkv, hd}).transpose(1, 2);
  q = q * cos + rotate_half(q) * sin;  // cos/sin [t, hd]: rows of the absolute positions
  k = k * cos + rotate_half(k) * sin;
  if (layer.qk_transform) {
    q = layer.qk_transform->apply(q);
    k = layer.qk_transform->apply(k);
  }
  Cache& kc = *k_cache_[static_cast<size_t>(index)];
  Cache& vc = *v_cache_[static_cast<size_t>(index)];
  kc.append(k);
  vc.append(v);
  at::Tensor attn = chunk_attention(q, kc.read(decoder_->dtype(), decoder_->device()),
                                    vc.read(decoder_->dtype(), decoder_->device()), position_, c.sliding_window,
                                    decoder_->dtype());  // [B, t, H*hd]
  at::Tensor h = hidden + layer.o->forward(attn);

  // ---- MLP block (SwiGLU)
  at::Tensor y = rms_norm(h, layer.post_attention_norm_weight, c.rms_norm_eps);
  at::Tensor act = at::silu(layer.gate->forward(y)) * layer.up->forward(y);  // [B, t, ffn]
  if (layer.down_input_transform) act = layer.down_input_transform->apply(act);
  return h + layer.down->forward(act);
}

at::Tensor DecodeSession::step(const at::Tensor& ids) {
  // ids [B, t] -> logits [B, t, vocab]
  c10::NoGradGuard no_grad;
  if (ids.dim() != 2) throw ShapeError("DecodeSession::step: ids must be [batch, tokens], got dim " + std::to_string(ids.dim()));
  const int64_t B = ids.size(0), t = ids.size(1);
  if (B < 1 || t < 1) {
    throw ShapeError("DecodeSession::step: need at least one sequence and one token per step, got ids [" + std::to_string(B) +
                     ", " + std::to_string(t) + "]");
  }
  if (batch_ != 0 && B != batch_) {
    throw ShapeError("DecodeSession::step: the cache holds " + std::to_string(batch_) + " sequences, got ids for " +
                     std::to_string(B) + " (reset() to start a new batch)");
  }
  const int64_t end = position_ + t;
  if (end > max_positions()) {
    throw ShapeError("DecodeSession::step: " + std::to_string(t) + " more tokens after " + std::to_string(position_) +
                     " would need " + std::to_string(end) + " positions, beyond the model's max_position_embeddings (" +
                     std::to_string(max_positions()) + ")");
  }
  const ModelConfig& c = decoder_->config();
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (!decoder_->layers()[static_cast<size_t>(l)].loaded()) {
      throw Error("DecodeSession::step: layer " + std::to_string(l) + " is not loaded (load the model with load_layers = true)");
    }
  }
  ensure_rope(end);
  at::Tensor hidden = decoder_->embed(ids);  // validates the ids before any cache is touched
  const at::Tensor cos = cos_.narrow(0, position_, t), sin = sin_.narrow(0, position_, t);
  try {
    for (int64_t l = 0; l < c.num_layers; ++l) hidden = run_layer(l, hidden, cos, sin);
  } catch (...) {
    for (auto* caches : {&k_cache_, &v_cache_})
      for (auto& cache : *caches) cache->truncate(position_);  // leave the session as before the call
    throw;
  }
  position_ = end;
  batch_ = B;
  return decoder_->head(hidden);
}

// ------------------------------------------------------------------ sampling

TokenSampler::TokenSampler(const SamplingOptions& options) : o_(options), rng_(options.seed) {
  if (!std::isfinite(o_.temperature) || o_.temperature < 0.0) {
    throw UsageError("--temperature must be a finite number >= 0 (0 = greedy), got " + std::to_string(o_.temperature));
  }
  if (o_.top_k < 0) throw UsageError("--top-k must be >= 0 (0 = all tokens), got " + std::to_string(o_.top_k));
}

int64_t TokenSampler::sample(const at::Tensor& logits) {
  at::Tensor l = logits.detach().to(at::kCPU, at::kDouble).contiguous().view(-1);  // [vocab]
  const double* p = l.data_ptr<double>();
  const int64_t V = l.numel();
  if (V == 0) throw ShapeError("TokenSampler: empty logits");
  for (int64_t i = 0; i < V; ++i) {
    if (std::isnan(p[i])) throw Error("TokenSampler: the logits contain NaN (token " + std::to_string(i) + ")");
  }
  if (o_.temperature == 0.0) return std::max_element(p, p + V) - p;  // first maximum
  // Candidates: every id (in id order), or the top_k ordered by (logit desc, id asc).
  std::vector<int64_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), int64_t{0});
  if (o_.top_k > 0 && o_.top_k < V) {
    const auto before = [p](int64_t a, int64_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
    std::partial_sort(ids.begin(), ids.begin() + o_.top_k, ids.end(), before);
    ids.resize(static_cast<size_t>(o_.top_k));
  }
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t i : ids) top = std::max(top, p[i]);
  if (!std::isfinite(top)) throw Error("TokenSampler: every candidate logit is -inf");
  std::vector<double> weights(ids.size());
  double total = 0.0;
  for (size_t j = 0; j < ids.size(); ++j) total += weights[j] = std::exp((p[ids[j]] - top) / o_.temperature);
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;  // uniform in [0, total)
  double cumulative = 0.0;
  for (size_t j = 0; j < ids.size(); ++j) {
    cumulative += weights[j];
    if (u < cumulative) return ids[j];
  }
  // Rounding left u at the very top: the last candidate with non-zero weight.
  for (size_t j = ids.size(); j-- > 0;)
    if (weights[j] > 0.0) return ids[j];
  return ids.front();
}

// ------------------------------------------------------------------ generation

double GenerateResult::prefill_tokens_per_second() const {
  return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
}

double GenerateResult::decode_tokens_per_second() const {
  return decode_seconds > 0 ? static_cast<double>(decode_steps) / decode_seconds : 0.0;
}

GenerateResult generate(const Decoder& decoder, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                        const std::function<void(int64_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  if (prompt.empty()) throw UsageError("generate: the prompt is empty (no tokens to condition on)");
  if (options.max_new_tokens < 1) {
    throw UsageError("--max-new-tokens must be >= 1, got " + std::to_string(options.max_new_tokens));
  }
  const int64_t P = static_cast<int64_t>(prompt.size());
  const int64_t positions = P + options.max_new_tokens - 1;  // the last new token is never fed back
  const int64_t max_pos = decoder.config().max_position_embeddings;
  if (positions > max_pos) {
    throw UsageError("generate: a prompt of " + std::to_string(P) + " tokens + --max-new-tokens " +
                     std::to_string(options.max_new_tokens) + " needs " + std::to_string(positions) +
                     " positions; the model's max_position_embeddings is " + std::to_string(max_pos));
  }
  TokenSampler sampler(options.sampling);
  DecodeSession session(decoder);
  session.reserve(positions);
  GenerateResult r;
  r.prompt_tokens = P;
  const auto long_opts = at::TensorOptions().dtype(at::kLong);

  auto emit = [&](int64_t token) {
    r.tokens.push_back(token);
    if (on_token) on_token(token);
    r.stopped_at_eos = options.eos_id && token == *options.eos_id;
  };
  const auto t0 = Clock::now();
  at::Tensor ids = at::tensor(at::ArrayRef<int64_t>(prompt), long_opts).view({1, P});
  at::Tensor logits = session.step(ids);  // [1, P, vocab]
  emit(sampler.sample(logits[0][P - 1]));
  const auto t1 = Clock::now();
  while (static_cast<int64_t>(r.tokens.size()) < options.max_new_tokens && !r.stopped_at_eos) {
    logits = session.step(at::full({1, 1}, r.tokens.back(), long_opts));
    emit(sampler.sample(logits[0][0]));
    ++r.decode_steps;
  }
  const auto t2 = Clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  r.decode_seconds = std::chrono::duration<double>(t2 - t1).count();
  r.cache = session.cache_bytes();
  return r;
}

}  // namespace resq
