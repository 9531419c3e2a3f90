// Shared fixtures of the packed-checkpoint tests (checkpoint_test.cpp, checkpoint_malformed_test.cpp):
// a tiny Llama-shaped config and metadata, a seeded checkpoint writer that remembers what it wrote,
// and the MalformedCheckpoint fixture that edits a written checkpoint. Torch-free (runs under ASan).
#pragma once

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstring>
#include <functional>
#include <map>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/model_shapes.h"
#include "common/test_util.h"
#include "resq/common/checksum.h"
#include "resq/common/error.h"
#include "resq/common/interrupt.h"
#include "resq/format/checkpoint.h"


namespace resq::format {

namespace fs = std::filesystem;
using nlohmann::json;

// A tiny Llama-shaped config: GQA (2 heads, 1 KV head), head_dim 8, odd-friendly sizes.
inline ModelConfig tiny_config(bool qkv_bias = false) {
  ModelConfig c = test::llama_config({/*hidden*/ 16, /*ffn*/ 24, /*layers*/ 2, /*heads*/ 2, /*kv_heads*/ 1,
                                      /*head_dim*/ 8, /*vocab*/ 40});
  if (qkv_bias) c.model_type = "qwen2";
  c.max_position_embeddings = 64;
  c.qkv_bias = qkv_bias;
  c.tie_word_embeddings = false;
  return c;
}

// Site specs as `resq quantize` builds them: r = 2 of 16, r_h = 1 of 8, down_proj all low.
inline CheckpointMeta tiny_meta(const ModelConfig& c, int64_t r = 2, int64_t r_h = 1, int wbits_low = 4) {
  CheckpointMeta m;
  m.model = c;
  m.r = r;
  m.r_h = r_h;
  for (SiteKind kind : {SiteKind::kQ, SiteKind::kK, SiteKind::kV, SiteKind::kO, SiteKind::kGate, SiteKind::kUp, SiteKind::kDown}) {
    SiteSpec s;
    s.kind = kind;
    std::tie(s.N, s.K) = site_dims(c, kind);
    if (kind == SiteKind::kO) {
      s.high_rule = HighRule::kPerHead;
      s.high_group = c.head_dim;
      s.high_count = r_h;
    } else {
      s.high_rule = HighRule::kLast;
      s.high_count = kind == SiteKind::kDown ? 0 : r;
    }
    s.has_bias = c.qkv_bias && (kind == SiteKind::kQ || kind == SiteKind::kK || kind == SiteKind::kV);
    s.weight_bits_low = wbits_low;
    s.weight_bits_high = 8;
    s.activations = {true, 4, 8, 1.0, s.high_count};
    m.sites[kind] = s;
  }
  m.kv = {true, 4, 8, 1.0, 0.95};
  m.online.qk_rotation = true;
  m.online.down_hadamard = true;
  m.online.hadamard_n = c.intermediate_size;
  m.online.hadamard_pow2 = 8;
  m.online.hadamard_block = 3;
  m.online.hadamard_construction = "test";
  m.recipe = {{"name", "test"}};
  m.provenance = {{"tool", "test"}, {"seed", 7}};
  return m;
}

// Everything written for one site, kept to compare with what the reader returns.
struct WrittenLinear {
  std::vector<int8_t> q;  // [N][K] original order
  std::vector<float> s_low, s_high, bias;
};

struct Written {
  std::map<std::pair<int64_t, SiteKind>, WrittenLinear> linears;
  std::vector<float> embed;
};

// Writes a complete random checkpoint to `dir`; returns what it wrote.
// A site's codes q [N][K] in ORIGINAL column order -> its packed linear (what the pipeline's
// pack_quantized_weight hands the writer: spec's column order and bit widths).
inline PackedLinear pack_site(const SiteSpec& s, const int8_t* q, const float* s_low, const float* s_high, const float* bias,
                       const std::string& what) {
  const std::vector<int32_t> order = s.packed_column_order();
  PackOptions o;
  o.column_order = order.data();
  o.bits_low = s.weight_bits_low;
  o.bits_high = s.weight_bits_high;
  o.what = what;
  return pack_linear(q, s_low, s_high, bias, {s.N, s.K4(), s.K8()}, o);
}

inline Written write_checkpoint(const std::string& dir, const CheckpointMeta& m, uint64_t seed, int64_t max_shard = kDefaultMaxShardBytes) {
  std::mt19937_64 rng(seed);
  const ModelConfig& c = m.model;
  Written w;
  CheckpointWriter writer(dir, max_shard);
  auto random_floats = [&](size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };
  w.embed = random_floats(static_cast<size_t>(c.vocab_size * c.hidden_size), -1, 1);
  writer.add_f32("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, w.embed.data());
  const auto head = random_floats(static_cast<size_t>(c.vocab_size * c.hidden_size), -1, 1);
  writer.add_f32("lm_head.weight", {c.vocab_size, c.hidden_size}, head.data());
  const std::vector<float> ones(static_cast<size_t>(c.hidden_size), 1.0f);
  writer.add_f32("model.norm.weight", {c.hidden_size}, ones.data());
  std::vector<float> signs(static_cast<size_t>(c.intermediate_size));
  for (auto& s : signs) s = (rng() & 1) ? 1.0f : -1.0f;
  writer.add_f32("resq.down_hadamard.signs", {c.intermediate_size}, signs.data());
  const std::vector<double> block = {1, 0, 0, 0, 1, 0, 0, 0, 1};
  writer.add("resq.down_hadamard.block", DType::F64, {3, 3}, block.data(), block.size() * sizeof(double));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    writer.add_f32(p + "input_layernorm.weight", {c.hidden_size}, ones.data());
    writer.add_f32(p + "post_attention_layernorm.weight", {c.hidden_size}, ones.data());
    const auto uc = random_floats(static_cast<size_t>(c.num_kv_heads * c.head_dim * c.head_dim), -1, 1);
    writer.add_f32("resq.layers." + std::to_string(l) + ".qk_rotation", {c.num_kv_heads, c.head_dim, c.head_dim}, uc.data());
    for (const auto& [kind, s] : m.sites) {
      WrittenLinear wl;
      const auto high = s.high_columns();
      std::vector<char> is_high(static_cast<size_t>(s.K), 0);
      for (int64_t k : high) is_high[k] = 1;
      wl.q.resize(static_cast<size_t>(s.N * s.K));
      for (int64_t n = 0; n < s.N; ++n) {
        for (int64_t k = 0; k < s.K; ++k) {
          const int bits = is_high[k] ? s.weight_bits_high : s.weight_bits_low;
          const int lo = -(1 << (bits - 1)), span = 1 << bits;
          wl.q[n * s.K + k] = static_cast<int8_t>(lo + static_cast<int>(rng() % span));
        }
      }
      wl.s_low = random_floats(static_cast<size_t>(s.N), 0.01f, 1.0f);
      wl.s_high = random_floats(static_cast<size_t>(s.N), 0.001f, 0.1f);
      if (s.has_bias) wl.bias = random_floats(static_cast<size_t>(s.N), -1, 1);
      writer.add_packed_linear(l, s, pack_site(s, wl.q.data(), wl.s_low.data(), wl.s_high.data(),
                                               s.has_bias ? wl.bias.data() : nullptr, site_prefix(l, kind)));
      w.linears[{l, kind}] = std::move(wl);
    }
  }
  writer.commit(m, model_config_to_json(c).dump(2), {});
  return w;
}

// ------------------------------------------------------------------ malformed checkpoints

class MalformedCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.file("ck");
    meta_ = tiny_meta(tiny_config());
    write_checkpoint(dir_, meta_, 9);
    model_ = (fs::path(dir_) / "model.safetensors").string();
    original_ = test::read_file(model_);
    meta_text_ = test::read_file((fs::path(dir_) / kCheckpointConfigFile).string());
  }
  // Expects PackedCheckpoint::open to throw a resq::Error whose message contains `needle`.
  void expect_error(const std::string& needle) {
    try {
      PackedCheckpoint::open(dir_);
      ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  void rewrite_meta(const std::function<void(json&)>& edit) {
    json j = json::parse(meta_text_);
    edit(j);
    test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), j.dump(2));
  }
  // Rewrites model.safetensors with one tensor replaced / dropped / added.
  void rewrite_tensors(const std::function<void(std::vector<TensorToWrite>&, std::vector<std::vector<uint8_t>>&)>& edit) {
    auto file = SafetensorsFile::open(model_);
    std::vector<TensorToWrite> ts;
    std::vector<std::vector<uint8_t>> storage;
    storage.reserve(file->tensors().size() + 8);
    for (const auto& [name, v] : file->tensors()) {
      storage.emplace_back(v.data, v.data + v.nbytes);
      ts.push_back({name, v.dtype, v.shape, storage.back().data(), v.nbytes});
    }
    edit(ts, storage);
    file.reset();
    write_safetensors(model_, ts);
  }
  test::TempDir tmp_;
  std::string dir_, model_, original_, meta_text_;
  CheckpointMeta meta_;
};

// Flips bit `bit` of byte `offset` inside tensor `name`'s data in `file` (offsets from the header).
inline void flip_tensor_byte(const std::string& file, const std::string& name, size_t offset, int bit) {
  std::string bytes = test::read_file(file);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const json header = json::parse(bytes.substr(8, header_len));
  const size_t begin = header.at(name).at("data_offsets").at(0).get<size_t>();
  bytes[8 + header_len + begin + offset] = static_cast<char>(bytes[8 + header_len + begin + offset] ^ (1 << bit));
  test::write_file(file, bytes);
}

}  // namespace resq::format
