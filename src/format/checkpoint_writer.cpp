// The atomic, streaming writer of a packed checkpoint (CheckpointWriter, docs/FORMAT.md 2.1-2.3):
// site tensors packed as the layout says, on io's sharded safetensors writer and staging directory.
#include <algorithm>
#include <filesystem>

#include "resq/common/checksum.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/format/checkpoint.h"

namespace resq::format {
namespace fs = std::filesystem;

CheckpointWriter::CheckpointWriter(std::string out_dir, int64_t max_shard_bytes)
    : staging_(std::move(out_dir)),
      shards_(staging_.path(), max_shard_bytes, TensorOrder::kElementSizeThenAdded,
              {{"format", "pt"}, {"resq", kCheckpointFormatName}}) {}

void CheckpointWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  shards_.add(name, dtype, shape, data, nbytes);  // validates name, shape and nbytes first
  // Hashed from the caller's buffer: the stored bytes are a verbatim copy, so a later difference is
  // corruption on the way to or on the disk.
  checksums_[name] = xxh64(data, nbytes);
}

void CheckpointWriter::add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  add(name, DType::F32, shape, data, sizeof(float) * static_cast<size_t>(std::max<int64_t>(numel, 0)));
}

void CheckpointWriter::add_packed_linear(int64_t layer, const SiteSpec& spec, const PackedLinear& packed) {
  const SiteTensorNames t = site_tensor_names(layer, spec.kind);
  const std::string site = site_prefix(layer, spec.kind);
  const int64_t N = spec.N, K = spec.K, K4 = spec.K4(), K8 = spec.K8();
  if (spec.storage != LinearStorage::kPacked) throw UsageError("checkpoint: " + site + " is not a packed site");
  const PackedLinearDims& d = packed.dims;
  if (d.N != N || d.K4 != K4 || d.K8 != K8) {
    throw ShapeError("checkpoint: " + site + ": packed linear N = " + std::to_string(d.N) + ", K4 = " + std::to_string(d.K4) +
                     ", K8 = " + std::to_string(d.K8) + ", the site has N = " + std::to_string(N) + ", K4 = " +
                     std::to_string(K4) + ", K8 = " + std::to_string(K8));
  }
  // Stored rows have no padding: a re-strided (GPU layout) linear is written compact.
  const bool is_compact = packed.ldw4 == packed4_row_bytes(K4) && packed.ldw8 == K8;
  const PackedLinear restrided = is_compact ? PackedLinear{} : restride(packed.view(), 1);
  const PackedLinear& compact = is_compact ? packed : restrided;
  add(t.qweight4, DType::U8, {N, packed4_row_bytes(K4)}, compact.w4.data(), compact.w4.size());
  add(t.qweight8, DType::I8, {N, K8}, compact.w8.data(), compact.w8.size());
  add_f32(t.scale4, {N}, compact.sw4.data());
  add_f32(t.scale8, {N}, compact.sw8.data());
  if (spec.permuted()) {
    const std::vector<int32_t> perm = spec.packed_column_order();
    add(t.perm, DType::I32, {K}, perm.data(), perm.size() * sizeof(int32_t));
  }
  if (spec.has_bias) {
    if (compact.bias.empty()) throw UsageError("checkpoint: " + site + ": the site has a bias but none was given");
    add_f32(t.bias, {N}, compact.bias.data());
  }
}

void CheckpointWriter::add_dense_linear(int64_t layer, const SiteSpec& spec, DType dtype, const void* weight, const float* bias) {
  const SiteTensorNames t = site_tensor_names(layer, spec.kind);
  const std::string site = site_prefix(layer, spec.kind);
  if (spec.storage != LinearStorage::kDense) throw UsageError("checkpoint: " + site + " is not a dense site");
  if (!dtype_is_floating(dtype) || dtype == DType::F64) throw UsageError("checkpoint: " + site + ": dense weights must be F32, BF16 or F16");
  add(t.weight, dtype, {spec.N, spec.K}, weight, dtype_size(dtype) * static_cast<size_t>(spec.N * spec.K));
  if (spec.has_bias) {
    if (!bias) throw UsageError("checkpoint: " + site + ": the site has a bias but none was given");
    add_f32(t.bias, {spec.N}, bias);
  }
}

std::string CheckpointWriter::commit(const CheckpointMeta& meta, const std::string& config_json_text,
                                     const std::vector<std::string>& extra_files) {
  if (staging_.committed()) throw UsageError("checkpoint: commit() called twice");
  shards_.finish();
  const fs::path dir(staging_.path());
  CheckpointMeta stored = meta;
  stored.format_minor_version = kCheckpointMinorVersion;
  stored.checksums = checksums_;
  write_file_atomically((dir / "config.json").string(), config_json_text, "model config");
  write_file_atomically((dir / kCheckpointConfigFile).string(), stored.to_json().dump(2) + "\n", "checkpoint metadata");
  for (const std::string& f : extra_files) {
    std::error_code ec;
    if (!fs::exists(f, ec)) continue;
    fs::copy_file(f, dir / fs::path(f).filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) throw IoError(f + ": cannot copy into the checkpoint: " + ec.message());
  }
  staging_.commit();  // fsyncs every file and the directory, renames without replacing
  return staging_.final_path();
}

}  // namespace resq::format
