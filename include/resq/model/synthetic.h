// Random-init HuggingFace model directories for named real shapes, with planted activation outliers
// (a few residual-stream channels at 20-100x the typical scale, the structure ResQ exploits).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "resq/model/config.h"

namespace resq {

// Names accepted by `resq make-model --shape`.
std::vector<std::string> synthetic_shape_names();

// The config of a named shape (tiny, llama-3.2-1b, llama-3-8b, llama-2-7b, qwen2.5-0.5b,
// qwen2.5-7b, plus test shapes tiny-qwen2 and tiny-gqa-tied). Throws UsageError for unknown names.
ModelConfig synthetic_shape_config(const std::string& name);

struct SyntheticModelOptions {
  uint64_t seed = 0;
  std::string weight_dtype = "auto";  // auto (float32 for < 100M parameters, else bfloat16) | float32 | bfloat16
  int64_t num_outlier_channels = 4;   // planted residual-stream outlier channels (0 = none)
  std::string tokenizer_dir;          // copy tokenizer files from here instead of training one
  int64_t tokenizer_vocab = 0;        // trained SentencePiece vocab (0 = min(model vocab, 512))
  int64_t max_shard_bytes = int64_t{2} << 30;  // shard above this size (model.safetensors.index.json)
};

// Writes config.json, generation_config.json, model.safetensors (or shards + index), a tokenizer
// and tokenizer_config.json into `out_dir` atomically (temporary directory, then rename; out_dir
// must not exist). Returns the planted outlier channels.
std::vector<int64_t> write_synthetic_model(const ModelConfig& config, const std::string& out_dir,
                                           const SyntheticModelOptions& options);

// Deterministic English-like text (random sentences over a fixed word list), ~`bytes` long.
std::string synthetic_text(uint64_t seed, int64_t bytes);

}  // namespace resq
