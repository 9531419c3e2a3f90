// Incremental decoding with a persistent KV cache per layer (kv_caches.h: packed CPU rows, the paged
// 4/8-bit CUDA cache, or float K/V) through Decoder::run_layer, token sampling and the batch-1
// generation loop of `resq generate`.
#include "resq/runtime/generate.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "resq/common/error.h"
#include "resq/runtime/kv_caches.h"

namespace resq {

// ------------------------------------------------------------------ DecodeSession

DecodeSession::DecodeSession(const Decoder& decoder) : decoder_(&decoder) {
  const ModelConfig& c = decoder.config();
  for (int64_t l = 0; l < c.num_layers; ++l) caches_.push_back(make_layer_kv_cache(decoder, l));
}

DecodeSession::~DecodeSession() = default;
DecodeSession::DecodeSession(DecodeSession&&) noexcept = default;

int64_t DecodeSession::max_positions() const { return decoder_->config().max_position_embeddings; }

void DecodeSession::reset() {
  for (auto& cache : caches_) cache->reset();
  position_ = 0;
  batch_ = 0;
}

void DecodeSession::reserve(int64_t length) {
  if (length > max_positions()) {
    throw ShapeError("DecodeSession: " + std::to_string(length) + " positions exceed the model's max_position_embeddings (" +
                     std::to_string(max_positions()) + ")");
  }
  ensure_rope(length);
  for (auto& cache : caches_) cache->reserve(length);
}

void DecodeSession::ensure_rope(int64_t length) {
  if (length <= rope_len_) return;
  // Grow geometrically (or to what reserve() asked for) so that a generation recomputes the tables
  // O(log n) times.
  const int64_t n = std::min(max_positions(), std::max<int64_t>({length, 2 * rope_len_, 64}));
  const RopeTables tables = decoder_->rope_tables(n);
  cos_ = tables.cos;  // [n, hd], compute dtype, the decoder's device
  sin_ = tables.sin;
  rope_len_ = n;
}

bool DecodeSession::packed_cache(int64_t layer) const { return caches_.at(static_cast<size_t>(layer))->packed(); }

const char* DecodeSession::cache_kind(int64_t layer) const { return caches_.at(static_cast<size_t>(layer))->name(); }

namespace {

const PackedRowsKvCache& rows_cache(const std::vector<std::unique_ptr<LayerKvCache>>& caches, int64_t layer) {
  const auto* c = dynamic_cast<const PackedRowsKvCache*>(caches.at(static_cast<size_t>(layer)).get());
  if (!c) {
    throw Error("DecodeSession: layer " + std::to_string(layer) + "'s KV cache (" +
                caches.at(static_cast<size_t>(layer))->name() + ") holds no packed CPU rows");
  }
  return *c;
}

}  // namespace

const cpu::QuantizedActivations& DecodeSession::packed_keys(int64_t layer) const {
  return rows_cache(caches_, layer).key_rows();
}

const cpu::QuantizedActivations& DecodeSession::packed_values(int64_t layer) const {
  return rows_cache(caches_, layer).value_rows();
}

at::Tensor DecodeSession::cached_keys(int64_t layer) const {
  return caches_.at(static_cast<size_t>(layer))->keys(decoder_->dtype(), decoder_->device());
}

at::Tensor DecodeSession::cached_values(int64_t layer) const {
  return caches_.at(static_cast<size_t>(layer))->values(decoder_->dtype(), decoder_->device());
}

KvCacheBytes DecodeSession::cache_bytes() const {
  const ModelConfig& c = decoder_->config();
  KvCacheBytes b;
  b.layers = c.num_layers;
  for (const auto& cache : caches_) {
    b.stored += cache->bytes();
    if (cache->packed()) ++b.packed_layers;
  }
  const int64_t values = 2 * c.num_layers * batch_ * c.num_kv_heads * position_ * c.head_dim;
  b.fp32 = values * 4;
  b.bf16 = values * 2;
  return b;
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
    for (int64_t l = 0; l < c.num_layers; ++l) {
      hidden = decoder_->run_layer(l, hidden, cos, sin, *caches_[static_cast<size_t>(l)]);
    }
  } catch (...) {
    for (auto& cache : caches_) cache->truncate(position_);  // leave the session as before the call
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
  const int64_t max_pos = decoder.config().max_position_embeddings;
  // P + N - 1 positions (the last new token is never fed back), compared without overflow.
  if (P > max_pos || options.max_new_tokens - 1 > max_pos - P) {
    throw UsageError("generate: a prompt of " + std::to_string(P) + " tokens + --max-new-tokens " +
                     std::to_string(options.max_new_tokens) + " do not fit the model's context: max_position_embeddings is " +
                     std::to_string(max_pos) + " (at most " + std::to_string(std::max<int64_t>(0, max_pos - P + 1)) +
                     " new tokens after this prompt)");
  }
  const int64_t positions = P + options.max_new_tokens - 1;
  TokenSampler sampler(options.sampling);
  DecodeSession session(decoder);
  // Memory follows what is generated, not what was allowed: the caches and RoPE tables are reserved
  // for the prompt and a first stretch of tokens, then grow geometrically (a generation that stops
  // at EOS after 10 tokens of --max-new-tokens 100000 never allocates for 100000).
  constexpr int64_t kReserveAhead = 256;
  session.reserve(std::min(positions, P + kReserveAhead));
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
  if (decoder.config().num_layers > 0) r.cache_kind = session.cache_kind(0);
  return r;
}

}  // namespace resq
