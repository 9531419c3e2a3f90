// Streams tensors into safetensors shards of bounded size inside a directory, HF naming
// (model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json), so a
// writer never holds more than one shard's tensors in memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace resq {

class ShardWriter {
 public:
  // dir must exist (callers write into a temporary directory and rename it when done).
  ShardWriter(std::string dir, int64_t max_shard_bytes);

  // t: any float32/bfloat16/float64 CPU tensor (made contiguous); written when the shard is full.
  void add(const std::string& name, const at::Tensor& t);

  // Writes the last shard, names the shards, writes the index when there is more than one shard.
  void finish(const std::map<std::string, std::string>& metadata);

 private:
  void flush();

  std::string dir_;
  int64_t max_bytes_;
  std::vector<std::pair<std::string, at::Tensor>> pending_;
  int64_t pending_bytes_ = 0;
  std::vector<std::pair<std::string, std::vector<std::string>>> shards_;  // file -> tensor names
  std::map<std::string, std::string> metadata_ = {{"format", "pt"}};
};

}  // namespace resq
