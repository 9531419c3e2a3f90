// Sharded safetensors writing for model directories (make-model, quantize).
#include "resq/model/shard_writer.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "resq/common/error.h"
#include "resq/io/safetensors.h"

namespace resq {
namespace fs = std::filesystem;

ShardWriter::ShardWriter(std::string dir, int64_t max_shard_bytes) : dir_(std::move(dir)), max_bytes_(max_shard_bytes) {}

void ShardWriter::add(const std::string& name, const at::Tensor& tensor) {
  at::Tensor t = tensor.cpu().contiguous();
  const auto type = t.scalar_type();
  if (type != at::kFloat && type != at::kBFloat16 && type != at::kDouble) {
    throw ShapeError("ShardWriter: tensor '" + name + "' must be float32, bfloat16 or float64");
  }
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  if (!pending_.empty() && pending_bytes_ + bytes > max_bytes_) flush();
  pending_.emplace_back(name, t);
  pending_bytes_ += bytes;
}

void ShardWriter::flush() {
  if (pending_.empty()) return;
  std::vector<TensorToWrite> tensors;
  std::vector<std::string> names;
  for (auto& [name, t] : pending_) {
    TensorToWrite w;
    w.name = name;
    w.dtype = t.scalar_type() == at::kBFloat16 ? DType::BF16 : t.scalar_type() == at::kDouble ? DType::F64 : DType::F32;
    w.shape = t.sizes().vec();
    w.data = t.data_ptr();
    w.nbytes = static_cast<size_t>(t.numel() * t.element_size());
    tensors.push_back(w);
    names.push_back(name);
  }
  const std::string file = "shard-" + std::to_string(shards_.size()) + ".safetensors";
  write_safetensors((fs::path(dir_) / file).string(), tensors, metadata_);
  shards_.emplace_back(file, names);
  pending_.clear();
  pending_bytes_ = 0;
}

void ShardWriter::finish(const std::map<std::string, std::string>& metadata) {
  metadata_ = metadata;
  flush();
  const fs::path dir(dir_);
  if (shards_.size() == 1) {
    fs::rename(dir / shards_[0].first, dir / "model.safetensors");
    return;
  }
  nlohmann::json weight_map = nlohmann::json::object();
  const size_t n = shards_.size();
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    fs::rename(dir / shards_[i].first, dir / name);
    total += static_cast<int64_t>(fs::file_size(dir / name));
    for (const auto& tensor : shards_[i].second) weight_map[tensor] = name;
  }
  std::ofstream out(dir / "model.safetensors.index.json", std::ios::binary);
  if (!out) throw IoError((dir / "model.safetensors.index.json").string() + ": cannot write");
  out << nlohmann::json({{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}).dump(2) << "\n";
}

}  // namespace resq
