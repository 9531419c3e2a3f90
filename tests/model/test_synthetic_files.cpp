// make-model's safetensors files (src/model/synthetic.cpp): every shard is byte-identical to what
// write_safetensors (HF's serializer layout: dtype rank, then name) makes of the same tensors, the
// index lists every tensor once with the shards' total size, and one shard is model.safetensors.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "resq/io/safetensors.h"
#include "resq/model/synthetic.h"

namespace resq {
namespace {

namespace fs = std::filesystem;

// Rewrites `path`'s tensors and metadata with write_safetensors into `copy` and compares the bytes.
void expect_hf_layout(const std::string& path, const std::string& copy) {
  const auto file = SafetensorsFile::open(path);
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, v] : file->tensors()) tensors.push_back({name, v.dtype, v.shape, v.data, v.nbytes});
  write_safetensors(copy, tensors, file->metadata());
  EXPECT_EQ(test::read_file(path), test::read_file(copy)) << path;
}

TEST(SyntheticFiles, ShardsAreHfSerializerBytes) {
  test::TempDir dir;
  SyntheticModelOptions so;
  so.seed = 3;
  so.tokenizer_vocab = 200;
  so.weight_dtype = "bfloat16";
  so.max_shard_bytes = 40000;  // tiny-qwen2 in bf16 is ~250 KB: several shards, biases mixed in
  write_synthetic_model(synthetic_shape_config("tiny-qwen2"), dir.file("m"), so);
  const fs::path m = dir.file("m");
  EXPECT_FALSE(fs::exists(m / "model.safetensors"));
  const nlohmann::json index = nlohmann::json::parse(test::read_file((m / "model.safetensors.index.json").string()));
  std::set<std::string> shards;
  for (const auto& [tensor, shard] : index["weight_map"].items()) shards.insert(shard.get<std::string>());
  ASSERT_GT(shards.size(), 3u);
  int64_t total = 0;
  int i = 0;
  for (const std::string& shard : shards) {
    char want[64];
    std::snprintf(want, sizeof want, "model-%05d-of-%05zu.safetensors", ++i, shards.size());
    EXPECT_EQ(shard, want);
    expect_hf_layout((m / shard).string(), dir.file("copy-" + shard));
    total += static_cast<int64_t>(fs::file_size(m / shard));
    // Only the last shard records the seed: the shards before it were written before the writer was
    // given the final metadata (kept as it was, so that make-model's bytes do not change).
    const auto meta = SafetensorsFile::open((m / shard).string())->metadata();
    EXPECT_EQ(meta.at("format"), "pt");
    EXPECT_EQ(meta.count("resq_synthetic_seed"), i == static_cast<int>(shards.size()) ? 1u : 0u);
  }
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  const TensorStore store = TensorStore::open_model_dir(m.string());
  EXPECT_EQ(store.size(), index["weight_map"].size());
  for (const auto& entry : fs::directory_iterator(m)) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find("spill"), std::string::npos) << name;
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  }
}

TEST(SyntheticFiles, OneShardIsModelSafetensors) {
  test::TempDir dir;
  SyntheticModelOptions so;
  so.seed = 4;
  so.tokenizer_vocab = 200;
  write_synthetic_model(synthetic_shape_config("tiny-gqa-tied"), dir.file("m"), so);
  EXPECT_FALSE(fs::exists(fs::path(dir.file("m")) / "model.safetensors.index.json"));
  expect_hf_layout(dir.file("m") + "/model.safetensors", dir.file("copy.safetensors"));
}

}  // namespace
}  // namespace resq
