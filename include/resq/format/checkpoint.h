// The resq packed checkpoint directory (format "resq-packed", version 1): the metadata
// of resq_config.json, an atomic sharded writer and a reader that validates everything before use
// (the site layout and tensor names: layout.h). Torch-free (the CPU/CUDA runtimes and `resq inspect`
// build on it). Spec: docs/FORMAT.md part 2. Implementation: checkpoint_{schema,writer,reader}.cpp.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "resq/format/layout.h"
#include "resq/format/packed.h"
#include "resq/format/packed_linear.h"
#include "resq/io/dtype.h"
#include "resq/io/safetensors.h"
#include "resq/io/safetensors_writer.h"
#include "resq/model/config.h"

namespace resq::format {

constexpr const char* kCheckpointFormatName = "resq-packed";
constexpr int kCheckpointVersion = 1;
// Minor version: 1 adds the per-tensor checksums (resq_config.json "checksums"); version 1.0
// checkpoints (no "format_minor_version" key) still open, without an integrity check. 2 stores one
// U_C per KV head (qk_rotation_shape); 1.0 and 1.1 checkpoints, one per layer, still open.
constexpr int kCheckpointMinorVersion = 2;
constexpr const char* kChecksumAlgorithm = "xxh64";
constexpr const char* kCheckpointConfigFile = "resq_config.json";
// Shards are cut above this size (HF's default "5GB" style limit, smaller so that writing streams).
constexpr int64_t kDefaultMaxShardBytes = int64_t{2} << 30;

// The online transforms a runtime applies.
struct OnlineSpec {
  bool qk_rotation = false;    // resq.layers.<l>.qk_rotation F32 qk_rotation_shape (U_C)
  bool down_hadamard = false;  // resq.down_hadamard.signs F32 [n], .block F64 [block][block] (U_D)
  int64_t hadamard_n = 0;
  int64_t hadamard_pow2 = 0;
  int64_t hadamard_block = 0;
  std::string hadamard_construction;
};

// Everything resq_config.json says (validated), plus the parsed config.json.
struct CheckpointMeta {
  int format_version = kCheckpointVersion;
  int format_minor_version = kCheckpointMinorVersion;
  int kernel_layout_version = kFormatVersion;
  ModelConfig model;               // config.json (untied: lm_head is always stored)
  int64_t r = 0;                   // high subspace of the hidden size
  int64_t r_h = 0;                 // high subspace of the head dim (o_proj input, KV cache)
  std::map<SiteKind, SiteSpec> sites;
  KvQuantSpec kv;
  OnlineSpec online;
  DType globals_dtype = DType::F32;  // embed_tokens, lm_head, norms
  nlohmann::json recipe;           // informational copy of the recipe
  nlohmann::json provenance;       // tool, source model, seeds, calibration file hash, ...
  // XXH64 of every tensor's bytes by name (minor version >= 1; filled by CheckpointWriter::commit).
  std::map<std::string, uint64_t> checksums;
  nlohmann::json to_json() const;  // the resq_config.json object
  // Parses resq_config.json; `source` names the file. Throws FormatError / ConfigError.
  static CheckpointMeta from_json(const nlohmann::json& j, const ModelConfig& model, const std::string& source);
};

// The shape of resq.layers.<l>.qk_rotation (U_C, applied as q ← q·U_C[h / G], k ← k·U_C[h] after RoPE):
// [num_kv_heads][head_dim][head_dim] from minor version 2, [head_dim][head_dim] (one per layer,
// shared by every head) in versions 1.0 and 1.1.
std::vector<int64_t> qk_rotation_shape(const CheckpointMeta& m);

// The "quantization_config" object of a packed checkpoint's config.json (docs/FORMAT.md): quant_method
// "resq", the format and its version, bits and recipe name, so that HF-style loaders (transformers,
// vLLM) refuse the directory loudly instead of initialising the unknown packed tensors at random.
// resq's own config parser ignores the key.
nlohmann::json hf_quantization_config(const CheckpointMeta& meta);

// Sizes of what a checkpoint stores, for `resq inspect` and the bit-budget report.
struct CheckpointSizes {
  int64_t quantized_weights = 0;       // number of weights stored packed
  int64_t packed_weight_bytes = 0;     // qweight4 + qweight8 bytes
  int64_t packed_scale_bytes = 0;      // scale4 + scale8 (+ perm) bytes of packed linears
  int64_t dense_linear_weights = 0;    // weights of dense-stored linears
  int64_t dense_linear_bytes = 0;
  int64_t global_bytes = 0;            // embeddings, lm_head, norms, biases, online transforms
  int64_t file_bytes = 0;              // sum of the safetensors files on disk
  int64_t parameters = 0;              // parameters of the model (config)
  // Bits per quantized weight including the per-channel scales (and o_proj perms).
  double bits_per_quantized_weight() const;
  // Size of the same model in bf16 (parameters x 2 bytes) over file_bytes.
  double compression_vs_bf16() const;
  // Every field above plus the two ratios, keyed by their names (inspect, quantize and report JSON).
  nlohmann::json to_json() const;
};

// ------------------------------------------------------------------ writer

// Writes a checkpoint into `<out_dir>.tmp.<pid>` and renames it to out_dir on commit(), so out_dir
// is either absent or complete (io StagingDirectory). Tensor bytes go to disk as they are added (no
// buffering in memory: a 1B model's ~1 GiB of layers + globals would otherwise sit in RAM until the
// shard is full) through io's ShardedSafetensorsWriter in TensorOrder::kElementSizeThenAdded: each
// file is laid out by decreasing element size (8, 4, 2, 1 bytes), keeping the order in which the
// tensors were added within one size. Destroying an uncommitted writer removes the temporary directory.
class CheckpointWriter {
 public:
  // Throws UsageError if out_dir exists, IoError if the temporary directory cannot be created.
  explicit CheckpointWriter(std::string out_dir, int64_t max_shard_bytes = kDefaultMaxShardBytes);
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  const std::string& temp_dir() const { return staging_.path(); }

  // Any tensor (copied). Throws UsageError on a duplicate name or nbytes != dtype size x numel.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  void add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data);

  // One packed site of layer `layer` (tensor names from format/layout.h): the rows of `packed`
  // (pack_linear with spec's column order and bit widths; any row strides, stored compact), its scales, its bias (required
  // when spec.has_bias) and spec's column order when the site is permuted. Throws UsageError when
  // the site is not packed, ShapeError when packed's dims are not spec's.
  void add_packed_linear(int64_t layer, const SiteSpec& spec, const PackedLinear& packed);
  // One dense site: weight [N][K] in `dtype` (F32/BF16/F16 raw bytes), bias float [N] or null.
  void add_dense_linear(int64_t layer, const SiteSpec& spec, DType dtype, const void* weight, const float* bias);

  // Writes the last shard (and the index when there is more than one), config.json (the given
  // text), resq_config.json (meta.to_json() with the format minor version and the checksum of every
  // tensor added), copies `extra_files` (tokenizer files; missing ones are skipped), fsyncs and
  // renames the directory into place. Returns the final directory.
  std::string commit(const CheckpointMeta& meta, const std::string& config_json_text,
                     const std::vector<std::string>& extra_files);

 private:
  StagingDirectory staging_;         // destroyed last: removes the directory unless committed
  ShardedSafetensorsWriter shards_;  // destroyed first: removes its spill files
  std::map<std::string, uint64_t> checksums_;  // XXH64 of every tensor added
};

// ------------------------------------------------------------------ reader

// One site of one layer, copied out of the checkpoint: the packed linear (row sums included, what
// every backend consumes) or the dense weights, plus the site's spec and column order.
struct LinearData {
  SiteSpec spec;
  PackedLinear packed;                 // packed storage: compact rows, scales, row sums, bias
  std::vector<int32_t> perm;           // [K] (packed column j = original column perm[j])
  std::vector<float> dense_weight;     // [N][K] float32 (dense storage)
  std::vector<float> dense_bias;       // [N] or empty (dense storage; a packed site's is packed.bias)
  // The site's bias [N], or empty.
  const std::vector<float>& bias() const { return spec.storage == LinearStorage::kPacked ? packed.bias : dense_bias; }
  // Dequantized weights [N][K] in ORIGINAL column order: scale_part[n] * q (fp32 product, the
  // value the quantizer computed), or the dense weights.
  std::vector<float> dequantized() const;
  // Unpacked q int8 [N][K] in ORIGINAL column order (packed storage only).
  std::vector<int8_t> unpacked_original_order() const;
};

class PackedCheckpoint {
 public:
  // Opens and validates DIR: resq_config.json (format name, versions, every field and value),
  // config.json, and every tensor: presence, dtype, shape, no unknown tensor, finite positive
  // scales, finite float tensors (embeddings, lm_head, norms, dense weights, biases, rotations),
  // integer values within the stated bit widths, zero pad nibbles, permutations, ±1 Hadamard signs,
  // and (minor version >= 1) a checksum listed for exactly the tensors present. The checksums
  // themselves are compared by verify_checksums(). Throws IoError / FormatError / ShapeError naming
  // the file and tensor.
  static PackedCheckpoint open(const std::string& dir);
  // True when DIR holds resq_config.json.
  static bool is_checkpoint_dir(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const CheckpointMeta& meta() const { return meta_; }
  const TensorStore& store() const { return *store_; }
  CheckpointSizes sizes() const { return sizes_; }

  // Hashes every tensor and compares it with resq_config.json's checksum: FormatError naming the
  // file and the first tensor whose bytes changed (a flipped byte anywhere in a packed weight or a
  // scale). Returns the number of tensors verified, 0 for a version 1.0 checkpoint (no checksums).
  // Reads every byte once (XXH64).
  int64_t verify_checksums() const;

  LinearData linear(int64_t layer, SiteKind kind) const;
  // A floating tensor (F32/BF16/F16/F64) converted to float32 / float64 (shape already validated).
  std::vector<float> float_tensor(const std::string& name) const;
  std::vector<double> double_tensor(const std::string& name) const;

 private:
  std::string dir_;
  CheckpointMeta meta_;
  std::shared_ptr<TensorStore> store_;
  CheckpointSizes sizes_;
};

}  // namespace resq::format
