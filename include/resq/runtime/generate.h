// Incremental decoding over a loaded Decoder with a persistent per-layer KV cache (the packed 4/8-bit
// rows of format/packed.h when the layer's cache transform is the integer runtime's
// PackedKvCacheQuant, transformed float K/V otherwise), token sampling, and the generation loop of
// `resq generate`.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cpu/quantize.h"
#include "resq/model/decoder.h"
#include "resq/model/kv_cache.h"

namespace resq {

class PackedKvCacheQuant;

// Bytes held by a session's KV cache (K and V, every layer, every cached position), and what the
// same K/V would take as plain fp32 or bf16 tensors [B, Hkv, T, hd].
struct KvCacheBytes {
  int64_t stored = 0;         // packed rows + per-row scales/zeros, or the float tensors' bytes
  int64_t fp32 = 0;           // 2 * layers * B * Hkv * T * hd * 4
  int64_t bf16 = 0;           // the same at 2 bytes per value
  int64_t packed_layers = 0;  // layers whose K and V caches hold packed 4/8-bit rows
  int64_t layers = 0;
};

// Appends tokens to a sequence batch and returns their logits, keeping each layer's K/V between
// calls: step() on a whole prompt is a prefill (causal attention inside the chunk, full attention to
// the cache), step() on one token per sequence is a decode step. Every layer runs through
// Decoder::run_layer (the one layer forward of eval too) with this session's cache of that layer, so
// the logits equal Decoder::forward on the whole sequence up to floating-point summation order.
// Every layer must be loaded. The decoder must outlive the session.
//
// Cache per layer (make_layer_kv_cache, resq/runtime/kv_caches.h):
//   - PackedKvCacheQuant transform (packed checkpoint on the CPU): packed 4/8-bit rows on the host,
//     ordered (position, batch, kv head), attention over their dequantized values;
//   - PackedCudaKvCacheQuant transform (packed checkpoint on --device cuda): the paged 4/8-bit CUDA
//     cache; decode steps read it directly (kv_decode_attention_cuda), a prefill into the empty cache
//     runs the fused attention over the same quantize-dequantized K/V;
//   - any other transform (KvFakeQuant in --mode simulate), or none (fp models): the transformed K/V
//     [B, Hkv, T, hd] in the compute dtype.
class DecodeSession {
 public:
  explicit DecodeSession(const Decoder& decoder);
  ~DecodeSession();
  DecodeSession(DecodeSession&&) noexcept;
  DecodeSession& operator=(DecodeSession&&) = delete;
  DecodeSession(const DecodeSession&) = delete;
  DecodeSession& operator=(const DecodeSession&) = delete;

  // ids [B, t] int64, t >= 1 (B fixed by the first call) -> logits [B, t, vocab] (float32; float64
  // for float64 models), the tokens taking positions [position(), position() + t). Throws
  // ShapeError for t < 1, a batch change, an id outside the vocabulary or a position beyond
  // config().max_position_embeddings; Error when a layer is not loaded. A step that throws leaves
  // the session as it was before the call.
  at::Tensor step(const at::Tensor& ids);

  int64_t position() const { return position_; }  // tokens cached per sequence
  int64_t batch() const { return batch_; }         // 0 before the first step
  int64_t max_positions() const;                   // config().max_position_embeddings
  // Empties the cache (the next step starts at position 0 with any batch size).
  void reset();
  // Prepares the RoPE tables and the caches for `length` positions at once (one allocation instead
  // of geometric growth). Throws ShapeError beyond max_positions().
  void reserve(int64_t length);

  // Whether layer `layer` stores packed 4/8-bit rows (CPU rows or the paged CUDA cache), and the CPU
  // rows (position() * B * Hkv rows, ordered (position, batch, kv head)); packed_keys/values throw
  // Error for a layer whose cache is not PackedRowsKvCache.
  bool packed_cache(int64_t layer) const;
  const char* cache_kind(int64_t layer) const;  // LayerKvCache::name(): "packed-rows", "paged-cuda", "dense"
  const cpu::QuantizedActivations& packed_keys(int64_t layer) const;
  const cpu::QuantizedActivations& packed_values(int64_t layer) const;
  // Dequantized / stored K or V of a layer: [B, Hkv, position(), hd] in the compute dtype.
  at::Tensor cached_keys(int64_t layer) const;
  at::Tensor cached_values(int64_t layer) const;

  KvCacheBytes cache_bytes() const;

 private:
  void ensure_rope(int64_t length);

  const Decoder* decoder_;
  std::vector<std::unique_ptr<LayerKvCache>> caches_;  // [layers]
  int64_t position_ = 0;
  int64_t batch_ = 0;
  at::Tensor cos_, sin_;  // [rope_len_, hd] rows of Decoder::rope_tables, compute dtype
  int64_t rope_len_ = 0;
};

// ------------------------------------------------------------------ sampling

struct SamplingOptions {
  double temperature = 0.0;  // 0 = greedy (argmax, lowest id on ties); > 0 samples softmax(logits / T)
  int64_t top_k = 0;         // > 0: sample among the k highest logits only (ignored when greedy)
  uint64_t seed = 0;         // the sampler's std::mt19937_64 seed: same seed, same tokens
};

// Picks the next token from one row of logits. Reproducible: the uniform draws are
// (mt19937_64() >> 11) * 2^-53, the candidates are ordered by (logit desc, id asc) and the
// probabilities are computed in float64, so a seed gives the same tokens on every platform.
class TokenSampler {
 public:
  // Throws UsageError for a negative or non-finite temperature or a negative top_k.
  explicit TokenSampler(const SamplingOptions& options);
  // logits [vocab] (any float dtype, any device) -> token id.
  int64_t sample(const at::Tensor& logits);

 private:
  SamplingOptions o_;
  std::mt19937_64 rng_;
};

// ------------------------------------------------------------------ generation

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::optional<int64_t> eos_id;  // stop after producing it (it is the last of `tokens`)
};

struct GenerateResult {
  std::vector<int64_t> tokens;  // the generated ids (ending with EOS when stopped_at_eos)
  int64_t prompt_tokens = 0;
  bool stopped_at_eos = false;
  double prefill_seconds = 0.0;  // the prompt's step() and the first token's sampling
  double decode_seconds = 0.0;   // the 1-token steps (and sampling) that produced tokens[1..]
  int64_t decode_steps = 0;      // = tokens.size() - 1
  KvCacheBytes cache;            // at the end
  std::string cache_kind;        // layer 0's LayerKvCache::name() ("packed-rows", "paged-cuda", "dense")
  double prefill_tokens_per_second() const;
  double decode_tokens_per_second() const;
};

// Batch-1 generation: prefill `prompt` in one step, then sample and feed one token at a time until
// max_new_tokens tokens (or EOS). on_token (optional) is called with each new id as it is sampled.
// Throws UsageError for an empty prompt, max_new_tokens < 1, or prompt + max_new_tokens - 1 positions
// beyond the model's max_position_embeddings (the last token is never fed back).
GenerateResult generate(const Decoder& decoder, const std::vector<int64_t>& prompt, const GenerateOptions& options,
                        const std::function<void(int64_t)>& on_token = {});

}  // namespace resq
