// Tests of the packed checkpoint (resq/format/checkpoint.h): write -> read round trips bit-exactly,
// the atomic writer, sharding, and the reader's rejection of malformed checkpoints (truncated files,
// flipped bytes, wrong versions, shape mismatches, missing or unknown tensors) with clear errors.
// Torch-free, so it also runs under AddressSanitizer (RESQ_SANITIZE=ON, see .ci/run).
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
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A tiny Llama-shaped config: GQA (2 heads, 1 KV head), head_dim 8, odd-friendly sizes.
ModelConfig tiny_config(bool qkv_bias = false) {
  ModelConfig c = test::llama_config({/*hidden*/ 16, /*ffn*/ 24, /*layers*/ 2, /*heads*/ 2, /*kv_heads*/ 1,
                                      /*head_dim*/ 8, /*vocab*/ 40});
  if (qkv_bias) c.model_type = "qwen2";
  c.max_position_embeddings = 64;
  c.qkv_bias = qkv_bias;
  c.tie_word_embeddings = false;
  return c;
}

// Site specs as `resq quantize` builds them: r = 2 of 16, r_h = 1 of 8, down_proj all low.
CheckpointMeta tiny_meta(const ModelConfig& c, int64_t r = 2, int64_t r_h = 1, int wbits_low = 4) {
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
PackedLinear pack_site(const SiteSpec& s, const int8_t* q, const float* s_low, const float* s_high, const float* bias,
                       const std::string& what) {
  const std::vector<int32_t> order = s.packed_column_order();
  PackOptions o;
  o.column_order = order.data();
  o.bits_low = s.weight_bits_low;
  o.bits_high = s.weight_bits_high;
  o.what = what;
  return pack_linear(q, s_low, s_high, bias, {s.N, s.K4(), s.K8()}, o);
}

Written write_checkpoint(const std::string& dir, const CheckpointMeta& m, uint64_t seed, int64_t max_shard = kDefaultMaxShardBytes) {
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
    const auto uc = random_floats(static_cast<size_t>(c.head_dim * c.head_dim), -1, 1);
    writer.add_f32("resq.layers." + std::to_string(l) + ".qk_rotation", {c.head_dim, c.head_dim}, uc.data());
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

TEST(CheckpointSiteSpec, SiteDimsFollowTheConfig) {
  const ModelConfig c = tiny_config();  // d 16, 2 heads x 8, 1 kv head, ffn 24
  EXPECT_EQ(site_dims(c, SiteKind::kQ), std::make_pair(int64_t{16}, int64_t{16}));
  EXPECT_EQ(site_dims(c, SiteKind::kV), std::make_pair(int64_t{8}, int64_t{16}));
  EXPECT_EQ(site_dims(c, SiteKind::kUp), std::make_pair(int64_t{24}, int64_t{16}));
  EXPECT_EQ(site_dims(c, SiteKind::kDown), std::make_pair(int64_t{16}, int64_t{24}));
}

TEST(CheckpointSiteSpec, PackedColumnOrderPutsHighColumnsLast) {
  SiteSpec o;
  o.K = 16;
  o.high_rule = HighRule::kPerHead;
  o.high_group = 8;
  o.high_count = 2;
  EXPECT_EQ(o.K8(), 4);
  EXPECT_EQ(o.K4(), 12);
  EXPECT_EQ(o.high_columns(), (std::vector<int64_t>{6, 7, 14, 15}));
  EXPECT_EQ(o.packed_column_order(), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 6, 7, 14, 15}));
  EXPECT_TRUE(o.permuted());
  SiteSpec q;
  q.K = 16;
  q.high_rule = HighRule::kLast;
  q.high_count = 3;
  EXPECT_EQ(q.K8(), 3);
  EXPECT_FALSE(q.permuted());
  EXPECT_EQ(q.high_columns(), (std::vector<int64_t>{13, 14, 15}));
}

TEST(Checkpoint, RoundTripIsBitExact) {
  for (bool bias : {false, true}) {
    test::TempDir tmp;
    const std::string dir = tmp.file("ck");
    const CheckpointMeta m = tiny_meta(tiny_config(bias));
    const Written w = write_checkpoint(dir, m, 11);
    EXPECT_FALSE(fs::exists(dir + ".tmp." + std::to_string(::getpid())));
    const PackedCheckpoint ck = PackedCheckpoint::open(dir);
    // The metadata comes back as given, plus the checksums commit() adds (checked in
    // MalformedCheckpoint.EveryTensorHasItsChecksumInTheMetadata).
    json got = ck.meta().to_json(), given = m.to_json();
    got.erase("checksums");
    given.erase("checksums");
    EXPECT_EQ(got, given);
    for (const auto& [key, wl] : w.linears) {
      const LinearData d = ck.linear(key.first, key.second);
      ASSERT_EQ(d.unpacked_original_order(), wl.q) << site_prefix(key.first, key.second);
      EXPECT_EQ(d.packed.sw4, wl.s_low);
      EXPECT_EQ(d.packed.sw8, wl.s_high);
      EXPECT_EQ(d.bias(), wl.bias);
      EXPECT_EQ(d.packed.ldw4, packed4_row_bytes(d.spec.K4()));  // compact rows, as stored
      EXPECT_EQ(d.packed.ldw8, d.spec.K8());
      // Dequantized values: scale of the column's part times q, in ORIGINAL column order.
      const auto deq = d.dequantized();
      const auto high = d.spec.high_columns();
      std::vector<char> is_high(static_cast<size_t>(d.spec.K), 0);
      for (int64_t k : high) is_high[k] = 1;
      for (int64_t n = 0; n < d.spec.N; ++n)
        for (int64_t k = 0; k < d.spec.K; ++k)
          ASSERT_EQ(deq[n * d.spec.K + k], (is_high[k] ? wl.s_high[n] : wl.s_low[n]) * static_cast<float>(wl.q[n * d.spec.K + k]));
      // Row sums of each part from the written codes: the reader hands them out with the linear.
      for (int64_t n = 0; n < d.spec.N; ++n) {
        int32_t s4 = 0, s8 = 0;
        for (int64_t k = 0; k < d.spec.K; ++k) (is_high[k] ? s8 : s4) += wl.q[n * d.spec.K + k];
        ASSERT_EQ(d.packed.rs4[n], s4) << "row " << n;
        ASSERT_EQ(d.packed.rs8[n], s8) << "row " << n;
      }
    }
    EXPECT_EQ(ck.float_tensor("model.embed_tokens.weight"), w.embed);
  }
}

TEST(Checkpoint, SizesMatchTheBitBudget) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  const CheckpointMeta m = tiny_meta(tiny_config());
  write_checkpoint(dir, m, 3);
  const CheckpointSizes s = PackedCheckpoint::open(dir).sizes();
  int64_t weights = 0, expect_bytes = 0, scale_bytes = 0;
  for (const auto& [kind, spec] : m.sites) {
    weights += spec.N * spec.K;
    expect_bytes += spec.N * (packed4_row_bytes(spec.K4()) + spec.K8());
    scale_bytes += 2 * 4 * spec.N + (spec.permuted() ? 4 * spec.K : 0);
  }
  const int64_t L = m.model.num_layers;
  EXPECT_EQ(s.quantized_weights, L * weights);
  EXPECT_EQ(s.packed_weight_bytes, L * expect_bytes);
  EXPECT_EQ(s.packed_scale_bytes, L * scale_bytes);
  EXPECT_DOUBLE_EQ(s.bits_per_quantized_weight(), 8.0 * (L * (expect_bytes + scale_bytes)) / (L * weights));
  EXPECT_EQ(s.file_bytes, static_cast<int64_t>(fs::file_size(fs::path(dir) / "model.safetensors")));
}

TEST(Checkpoint, ShardsWithAnIndexAboveTheLimit) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  const CheckpointMeta m = tiny_meta(tiny_config());
  const Written w = write_checkpoint(dir, m, 5, /*max_shard=*/2048);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  const PackedCheckpoint ck = PackedCheckpoint::open(dir);
  EXPECT_GT(ck.store().files().size(), 2u);
  EXPECT_EQ(ck.linear(1, SiteKind::kDown).unpacked_original_order(), w.linears.at({1, SiteKind::kDown}).q);
}

TEST(CheckpointWriter, IsAtomic) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  {
    CheckpointWriter writer(dir);
    const float x[2] = {1, 2};
    writer.add_f32("a", {2}, x);
    EXPECT_THROW(writer.add_f32("a", {2}, x), UsageError);
    EXPECT_TRUE(fs::exists(writer.temp_dir()));
    // destroyed without commit: nothing left behind
  }
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  fs::create_directories(dir);
  EXPECT_THROW(CheckpointWriter w2(dir), UsageError);
}

// The writer streams tensors to disk (spill files per element size) and assembles each shard from
// them: every tensor must come back byte for byte, aligned to its element size, the data section
// contiguous from the header to the end of the file, and no spill file may be left behind.
TEST(CheckpointWriter, StreamedShardsAreAlignedContiguousAndComplete) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  struct T { std::string name; DType dtype; std::vector<int64_t> shape; std::vector<uint8_t> bytes; };
  std::vector<T> added;
  std::mt19937 rng(77);
  const std::vector<std::pair<DType, int64_t>> kinds = {{DType::U8, 3}, {DType::F64, 2}, {DType::BF16, 3}, {DType::F32, 5},
                                                        {DType::I32, 1}, {DType::I8, 7}, {DType::F16, 1}, {DType::U8, 0}};
  {
    CheckpointWriter writer(dir, /*max_shard_bytes=*/96);
    for (int i = 0; i < 24; ++i) {
      const auto& [dtype, n] = kinds[static_cast<size_t>(i) % kinds.size()];
      T t{"t" + std::to_string(i), dtype, {n + i % 3}, {}};
      t.bytes.resize(dtype_size(dtype) * static_cast<size_t>(t.shape[0]));
      for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
      writer.add(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
      added.push_back(t);
    }
    writer.commit(tiny_meta(tiny_config()), "{}\n", {});
  }
  std::map<std::string, bool> seen;
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find("spill"), std::string::npos) << name;
    if (entry.path().extension() != ".safetensors") continue;
    ++shards;
    auto file = SafetensorsFile::open(entry.path().string());
    std::vector<const TensorView*> views;
    for (const auto& [n, v] : file->tensors()) views.push_back(&v);
    std::sort(views.begin(), views.end(), [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
    uint64_t header_len = 0;
    {
      std::ifstream in(entry.path(), std::ios::binary);
      uint8_t p[8];
      in.read(reinterpret_cast<char*>(p), 8);
      for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(p[i]) << (8 * i);
    }
    uint64_t data_bytes = 0;
    for (size_t i = 0; i < views.size(); ++i) {
      const TensorView& v = *views[i];
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % dtype_size(v.dtype), 0u) << v.name << " is misaligned";
      if (i + 1 < views.size()) {
        EXPECT_EQ(v.data + v.nbytes, views[i + 1]->data) << "gap or overlap after " << v.name;
      }
      data_bytes += v.nbytes;
      const auto it = std::find_if(added.begin(), added.end(), [&](const T& t) { return t.name == v.name; });
      ASSERT_NE(it, added.end()) << v.name;
      EXPECT_EQ(v.dtype, it->dtype);
      EXPECT_EQ(v.shape, it->shape);
      EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.nbytes), it->bytes) << v.name;
      EXPECT_FALSE(seen[v.name]) << v.name << " in two shards";
      seen[v.name] = true;
    }
    EXPECT_EQ(header_len % 8, 0u);
    EXPECT_EQ(8 + header_len + data_bytes, fs::file_size(entry.path())) << entry.path();
  }
  EXPECT_GT(shards, 2);
  EXPECT_EQ(seen.size(), added.size());
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
}

TEST(CheckpointWriter, RejectsOutOfRangeWeights) {
  test::TempDir tmp;
  const CheckpointMeta m = tiny_meta(tiny_config(), 2, 1, /*wbits_low=*/3);
  CheckpointWriter writer(tmp.file("ck"));
  const SiteSpec& s = m.sites.at(SiteKind::kQ);
  std::vector<int8_t> q(static_cast<size_t>(s.N * s.K), 0);
  std::vector<float> sc(static_cast<size_t>(s.N), 1.0f);
  q[5] = 4;  // 3-bit range is [-4, 3]
  try {
    writer.add_packed_linear(0, s, pack_site(s, q.data(), sc.data(), sc.data(), nullptr, "checkpoint: q_proj"));
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("q[0, 5] = 4 is outside the 3-bit range"), std::string::npos) << e.what();
  }
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

TEST_F(MalformedCheckpoint, TheUntouchedCheckpointOpens) { EXPECT_NO_THROW(PackedCheckpoint::open(dir_)); }

TEST_F(MalformedCheckpoint, TruncatedFileAtManyLengths) {
  int errors = 0;
  for (size_t len = 0; len < original_.size(); len += 1 + original_.size() / 97) {
    test::write_file(model_, original_.substr(0, len));
    EXPECT_THROW(PackedCheckpoint::open(dir_), Error) << "length " << len;
    ++errors;
  }
  EXPECT_GT(errors, 90);
}

TEST_F(MalformedCheckpoint, FlippedBytesNeverCrash) {
  // Every byte of the header, and random bytes of the data, flipped one at a time: the reader
  // either rejects the file with a resq::Error or (for data bytes that stay in range) accepts it.
  uint64_t header_len = 0;
  std::memcpy(&header_len, original_.data(), 8);
  std::mt19937_64 rng(1234);
  int rejected = 0, accepted = 0;
  for (size_t i = 0; i < 8 + header_len + 400; ++i) {
    const size_t pos = i < 8 + header_len ? i : 8 + header_len + rng() % (original_.size() - 8 - header_len);
    std::string bytes = original_;
    bytes[pos] = static_cast<char>(bytes[pos] ^ (1 << (rng() % 8)));
    test::write_file(model_, bytes);
    try {
      PackedCheckpoint::open(dir_);
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, static_cast<int>(header_len) / 2);
  EXPECT_GT(accepted, 0);  // flips inside in-range int8 data are valid checkpoints
}

TEST_F(MalformedCheckpoint, WrongFormatVersion) {
  rewrite_meta([](json& j) { j["format_version"] = 2; });
  expect_error("checkpoint format_version 2 is not supported");
}

TEST_F(MalformedCheckpoint, WrongFormatName) {
  rewrite_meta([](json& j) { j["format"] = "resq-simulated"; });
  expect_error("'format' must be \"resq-packed\", got \"resq-simulated\"");
}

TEST_F(MalformedCheckpoint, WrongKernelLayoutVersion) {
  rewrite_meta([](json& j) { j["kernel_layout_version"] = 7; });
  expect_error("kernel_layout_version 7 is not supported");
}

TEST_F(MalformedCheckpoint, UnknownKeyInMetadata) {
  rewrite_meta([](json& j) { j["sites"]["q_proj"]["bitz"] = 4; });
  expect_error("unknown key 'sites.q_proj.bitz'");
}

TEST_F(MalformedCheckpoint, MetadataShapeDisagreesWithConfig) {
  rewrite_meta([](json& j) { j["sites"]["o_proj"]["in_features"] = 32; });
  expect_error("'sites.o_proj.in_features' must be an integer in [16, 16], got 32");
}

TEST_F(MalformedCheckpoint, HighCountChangesTheExpectedShapes) {
  rewrite_meta([](json& j) { j["sites"]["q_proj"]["high"]["count"] = 3; });
  expect_error("tensor 'model.layers.0.self_attn.q_proj.qweight8' has shape [16, 2], expected [16, 3]");
}

TEST_F(MalformedCheckpoint, MissingTensor) {
  rewrite_tensors([](auto& ts, auto&) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [](const TensorToWrite& t) { return t.name == "model.layers.1.mlp.up_proj.scale8"; }),
             ts.end());
  });
  expect_error("tensor 'model.layers.1.mlp.up_proj.scale8' is missing");
}

TEST_F(MalformedCheckpoint, UnknownTensor) {
  rewrite_tensors([](auto& ts, auto& storage) {
    storage.push_back(std::vector<uint8_t>(4, 0));
    ts.push_back({"model.layers.0.extra", DType::F32, {1}, storage.back().data(), 4});
  });
  expect_error("unexpected tensor 'model.layers.0.extra'");
}

TEST_F(MalformedCheckpoint, TensorShapeMismatch) {
  rewrite_tensors([](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.k_proj.qweight8") t.shape = {t.shape[1], t.shape[0]};
  });
  expect_error("tensor 'model.layers.0.self_attn.k_proj.qweight8' has shape [2, 8], expected [8, 2]");
}

TEST_F(MalformedCheckpoint, WrongDtype) {
  rewrite_tensors([](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.k_proj.qweight8") t.dtype = DType::U8;
  });
  expect_error("has dtype U8, expected I8");
}

TEST_F(MalformedCheckpoint, NonPositiveScale) {
  rewrite_tensors([](auto& ts, auto& storage) {
    for (auto& t : ts) {
      if (t.name == "model.layers.1.mlp.down_proj.scale4") {
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        const float bad = -0.5f;
        std::memcpy(storage.back().data() + 4, &bad, 4);
        t.data = storage.back().data();
      }
    }
  });
  expect_error("'model.layers.1.mlp.down_proj.scale4' element 1 = -0.500000 is not a finite positive scale");
}

TEST_F(MalformedCheckpoint, WrongPermutation) {
  rewrite_tensors([](auto& ts, auto& storage) {
    for (auto& t : ts) {
      if (t.name == "model.layers.0.self_attn.o_proj.perm") {
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        std::swap_ranges(storage.back().begin(), storage.back().begin() + 4, storage.back().begin() + 4);
        t.data = storage.back().data();
      }
    }
  });
  expect_error("'model.layers.0.self_attn.o_proj.perm' is not the column order");
}

TEST_F(MalformedCheckpoint, OutOfRangeValuesForTheStatedBits) {
  // Declare 3-bit low parts: the random 4-bit values written by the fixture now violate the range.
  rewrite_meta([](json& j) { j["sites"]["gate_proj"]["weight_bits"]["low"] = 3; });
  expect_error("is outside the 3-bit range");
}

TEST_F(MalformedCheckpoint, BadHadamardSign) {
  rewrite_tensors([](auto& ts, auto& storage) {
    for (auto& t : ts) {
      if (t.name == "resq.down_hadamard.signs") {
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        const float bad = 0.5f;
        std::memcpy(storage.back().data(), &bad, 4);
        t.data = storage.back().data();
      }
    }
  });
  expect_error("'resq.down_hadamard.signs' element 0 is not +1 or -1");
}

TEST_F(MalformedCheckpoint, MissingConfigFiles) {
  fs::remove(fs::path(dir_) / "config.json");
  EXPECT_THROW(PackedCheckpoint::open(dir_), Error);
  fs::remove(fs::path(dir_) / kCheckpointConfigFile);
  expect_error("not a resq packed checkpoint");
}

TEST_F(MalformedCheckpoint, InvalidJson) {
  test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), meta_text_.substr(0, meta_text_.size() / 2));
  expect_error("invalid JSON");
}

// Issue 19, defect 1: a deeply nested value in resq_config.json (here the free-form provenance)
// parsed, then overflowed the stack when the metadata was copied. Refused at the parser now.
TEST_F(MalformedCheckpoint, DeeplyNestedMetadataIsRefused) {
  const size_t n = 100000;
  std::string text = meta_text_;
  const std::string key = "\"provenance\": ";
  const size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos);
  const size_t end = text.find('}', at) + 1;  // the provenance object is flat
  text.replace(at + key.size(), end - at - key.size(), std::string(n, '[') + std::string(n, ']'));
  test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), text);
  expect_error(kCheckpointConfigFile + std::string(": invalid JSON at 'provenance[0][0][0]"));
  expect_error("nested deeper than 128 levels");
}

// Issue 19, defect 2: a number beyond double in resq_config.json escaped as nlohmann's
// out_of_range ("internal error"); now a FormatError naming the file and the key.
TEST_F(MalformedCheckpoint, NumberOverflowNamesTheKey) {
  std::string text = meta_text_;
  const size_t at = text.find("\"k_clip_ratio\": ");
  ASSERT_NE(at, std::string::npos);
  const size_t value = at + std::string("\"k_clip_ratio\": ").size();
  text.replace(value, text.find_first_of(",\n}", value) - value, "1e400");
  test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), text);
  try {
    PackedCheckpoint::open(dir_);
    ADD_FAILURE() << "1e400 accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("resq_config.json: invalid JSON at 'kv_cache.k_clip_ratio': number overflow "
                                         "parsing '1e400'"),
              std::string::npos)
        << e.what();
  }
}

// Issue 19, defect 3: config.json dimensions whose products overflow int64 (heads x head_dim, the
// parameter count) reached PackedCheckpoint::open before any tensor was checked (UBSan: signed
// overflow). They are bounded when config.json is read; scripts/test-asan.sh runs this under UBSan.
TEST_F(MalformedCheckpoint, HugeConfigDimensionsAreRefusedBeforeAnyArithmetic) {
  const std::string config_path = (fs::path(dir_) / "config.json").string();
  const json original = json::parse(test::read_file(config_path));
  const auto with = [&](const json& changes) {
    json c = original;
    for (auto it = changes.begin(); it != changes.end(); ++it) c[it.key()] = it.value();
    test::write_file(config_path, c.dump());
  };
  with({{"num_attention_heads", 16384}, {"num_key_value_heads", 16384}, {"head_dim", 1048576}});
  expect_error("config.json: 'num_attention_heads' x head_dim = 17179869184 exceeds 1048576");
  with({{"hidden_size", int64_t{1} << 62}});
  expect_error("config.json: 'hidden_size' must be an integer in [1, 1048576], got 4611686018427387904");
  with({{"num_hidden_layers", int64_t{1} << 40}});
  expect_error("'num_hidden_layers' must be an integer in [1, 4096]");
  with({{"vocab_size", int64_t{1} << 30}});
  expect_error("'vocab_size' must be an integer in [1, 16777216]");
  with({{"hidden_size", 1048576}, {"intermediate_size", 1048576}, {"vocab_size", 16777216},
        {"num_hidden_layers", 4096}, {"num_attention_heads", 16384}, {"num_key_value_heads", 16384},
        {"head_dim", 64}});
  // The largest accepted config: every size fits in int64; the metadata no longer matches it.
  expect_error("'sites.q_proj.out_features' must be an integer in [1048576, 1048576], got 16");
}

// ------------------------------------------------------------------ integrity (format 1.1)

// Flips bit `bit` of byte `offset` inside tensor `name`'s data in `file` (offsets from the header).
void flip_tensor_byte(const std::string& file, const std::string& name, size_t offset, int bit) {
  std::string bytes = test::read_file(file);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  const json header = json::parse(bytes.substr(8, header_len));
  const size_t begin = header.at(name).at("data_offsets").at(0).get<size_t>();
  bytes[8 + header_len + begin + offset] = static_cast<char>(bytes[8 + header_len + begin + offset] ^ (1 << bit));
  test::write_file(file, bytes);
}

TEST_F(MalformedCheckpoint, EveryTensorHasItsChecksumInTheMetadata) {
  const json j = json::parse(meta_text_);
  EXPECT_EQ(j.at("format_version"), 1);
  EXPECT_EQ(j.at("format_minor_version"), 1);
  EXPECT_EQ(j.at("checksums").at("algorithm"), "xxh64");
  const auto file = SafetensorsFile::open(model_);
  ASSERT_EQ(j.at("checksums").at("tensors").size(), file->tensors().size());
  for (const auto& [name, v] : file->tensors()) {
    // XXH64 itself is checked against the published values in tests/common_tests/checksum_test.cpp.
    EXPECT_EQ(j.at("checksums").at("tensors").at(name), checksum_hex(xxh64(v.data, v.nbytes))) << name;
  }
  EXPECT_EQ(PackedCheckpoint::open(dir_).verify_checksums(), static_cast<int64_t>(file->tensors().size()));
}

TEST_F(MalformedCheckpoint, AFlippedByteInAPackedWeightOrAScaleIsRefusedNamingTheTensor) {
  // Both flips leave valid values (any int8 is an 8-bit code; a scale's lowest mantissa bit keeps it
  // finite and positive): only the checksum can tell.
  for (const auto& [name, offset, bit] : std::vector<std::tuple<std::string, size_t, int>>{
           {"model.layers.1.self_attn.v_proj.qweight8", 3, 0}, {"model.layers.0.mlp.gate_proj.scale4", 4, 0}}) {
    test::write_file(model_, original_);
    flip_tensor_byte(model_, name, offset, bit);
    const PackedCheckpoint ck = PackedCheckpoint::open(dir_);
    const std::string msg = test::message_of<FormatError>([&] { ck.verify_checksums(); });
    EXPECT_NE(msg.find("tensor '" + name + "' is corrupt"), std::string::npos) << msg;
    EXPECT_NE(msg.find(model_), std::string::npos) << msg;
  }
}

TEST_F(MalformedCheckpoint, Version10CheckpointsWithoutChecksumsStillOpen) {
  rewrite_meta([](json& j) {
    j.erase("format_minor_version");
    j.erase("checksums");
  });
  const PackedCheckpoint ck = PackedCheckpoint::open(dir_);
  EXPECT_EQ(ck.meta().format_minor_version, 0);
  EXPECT_EQ(ck.verify_checksums(), 0);
}

TEST_F(MalformedCheckpoint, ChecksumListMustMatchTheTensors) {
  rewrite_meta([](json& j) { j["checksums"]["tensors"].erase("lm_head.weight"); });
  expect_error("no checksum for tensor 'lm_head.weight'");
  rewrite_meta([](json& j) { j["checksums"]["tensors"]["ghost"] = "0123456789abcdef"; });
  expect_error("checksum for tensor 'ghost', which is not in the checkpoint");
  rewrite_meta([](json& j) { j["checksums"]["tensors"]["lm_head.weight"] = "xyz"; });
  expect_error("'checksums.tensors[\"lm_head.weight\"]' must be a string of 16 lowercase hex digits");
  rewrite_meta([](json& j) { j["checksums"]["algorithm"] = "md5"; });
  expect_error("checksums.algorithm");
  rewrite_meta([](json& j) { j.erase("checksums"); });
  expect_error("checksums");
  rewrite_meta([](json& j) { j["format_minor_version"] = 2; });
  expect_error("checkpoint format version 1.2 is newer than this resq reads (1.1)");
}

TEST_F(MalformedCheckpoint, NonFiniteFloatTensorsAreRefused) {
  // An all-NaN lm_head, an infinite embedding, a NaN norm: each named with its element.
  auto poison = [&](const std::string& name, size_t element, uint32_t bits) {
    test::write_file(model_, original_);
    rewrite_tensors([&](auto& ts, auto& storage) {
      for (auto& t : ts) {
        if (t.name != name) continue;
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        for (size_t i = element; i < t.nbytes / 4; i += (name == "lm_head.weight" ? 1 : t.nbytes)) {
          std::memcpy(storage.back().data() + 4 * i, &bits, 4);
        }
        t.data = storage.back().data();
      }
    });
  };
  poison("lm_head.weight", 0, 0x7FC00000u);
  expect_error("tensor 'lm_head.weight' element 0 is NaN");
  poison("model.embed_tokens.weight", 17, 0xFF800000u);
  expect_error("tensor 'model.embed_tokens.weight' element 17 is -inf");
  poison("model.layers.1.input_layernorm.weight", 3, 0x7F800000u);
  expect_error("'model.layers.1.input_layernorm.weight' element 3");
}

TEST(CheckpointWriter, CommitNeverReplacesADirectoryCreatedMeanwhile) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  {
    CheckpointWriter writer(dir);
    const float x[2] = {1, 2};
    writer.add_f32("a", {2}, x);
    fs::create_directory(dir);  // someone else's (empty) directory appears before the rename
    EXPECT_THROW(writer.commit(tiny_meta(tiny_config()), "{}\n", {}), UsageError);
  }
  EXPECT_TRUE(fs::is_empty(dir));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1);  // no temporary left
}

TEST(CheckpointWriter, RemovesTheTemporaryDirectoriesOfDeadRuns) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  const std::string stale = dir + ".tmp." + std::to_string(pid);
  fs::create_directories(stale);
  test::write_file(stale + "/spill-0-1", "left by a killed run");
  {
    CheckpointWriter writer(dir);
    EXPECT_FALSE(fs::exists(stale));
  }
}

TEST(CheckpointWriter, AnInterruptUnwindsAndRemovesTheTemporaryDirectory) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  reset_interrupt_for_testing();
  {
    CheckpointWriter writer(dir);
    const float x[2] = {1, 2};
    writer.add_f32("a", {2}, x);
    std::raise(SIGINT);  // the handler only sets the flag
    EXPECT_THROW(writer.add_f32("b", {2}, x), InterruptedError);
  }
  reset_interrupt_for_testing();
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

}  // namespace
}  // namespace resq::format
