// Llama-shaped ModelConfigs for the tests that need only a model's dimensions (layouts, checkpoint
// metadata); everything else keeps ModelConfig's defaults.
#pragma once

#include <cstdint>

#include "resq/model/config.h"

namespace resq::test {

struct LlamaShape {
  int64_t hidden = 0, ffn = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
};

inline ModelConfig llama_config(const LlamaShape& s) {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = s.hidden;
  c.intermediate_size = s.ffn;
  c.num_layers = s.layers;
  c.num_heads = s.heads;
  c.num_kv_heads = s.kv_heads;
  c.head_dim = s.head_dim;
  c.vocab_size = s.vocab;
  return c;
}

}  // namespace resq::test
