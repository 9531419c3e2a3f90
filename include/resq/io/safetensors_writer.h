// The safetensors writers: one file from memory (write_safetensors, HF's serializer layout) and the
// streaming sharded writer of model directories (make-model, packed checkpoints), both on one
// header encoder and one atomic file writer; plus a staging directory renamed into place when whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "resq/io/dtype.h"

namespace resq {

// HF file names of a model directory's weights.
constexpr const char* kSafetensorsSingleFile = "model.safetensors";
constexpr const char* kSafetensorsIndexFile = "model.safetensors.index.json";

// One tensor for write_safetensors: `data` holds nbytes = dtype_size(dtype) * numel(shape)
// little-endian row-major bytes (may be null only when nbytes == 0).
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

// Writes a safetensors file byte-identical to what HF's serializer produces for the same input:
// compact JSON header ("__metadata__" first when non-empty, then tensors in data order), padded
// with spaces to a multiple of 8 bytes; data contiguous from offset 0 to the end of the file,
// ordered by decreasing dtype alignment then by name (so every tensor is aligned to its element
// size without padding). Validates before touching the disk (UsageError for duplicate, empty or
// "__metadata__" names, negative dimensions, nbytes != dtype size x numel, null data). Writes to
// `path + ".tmp.<pid>"`, fsyncs and renames into place, so `path` is either the old file or the
// complete new one; the temporary file is removed on failure (IoError naming the path).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The order of the tensors' bytes inside one file. Both keep every tensor aligned to its element
// size with no padding (safetensors data must be contiguous); a reader may not assume either.
enum class TensorOrder {
  kHuggingFace,          // decreasing dtype alignment rank, then name (write_safetensors, make-model)
  kElementSizeThenAdded  // decreasing element size (8, 4, 2, 1 bytes), then the order of add() (checkpoints)
};

// Streams tensors into safetensors shards of at most max_shard_bytes of data each (a tensor larger
// than that gets a shard of its own) inside an existing directory `dir`. Nothing is buffered in
// memory: add() appends the bytes to one spill file per element size in `dir`, and a full shard is
// assembled from them (header + data in `order`) into shard-<i>.safetensors atomically (temporary
// name, fsync, rename). finish() names the shards as HF does: one -> model.safetensors; n > 1 ->
// model-0000i-of-0000n.safetensors + model.safetensors.index.json ({"metadata": {"total_size"},
// "weight_map": {tensor: file}}). Spill files never outlive the writer.
class ShardedSafetensorsWriter {
 public:
  // `metadata`: the __metadata__ of every shard written until set_metadata() changes it.
  ShardedSafetensorsWriter(std::string dir, int64_t max_shard_bytes, TensorOrder order,
                           std::map<std::string, std::string> metadata);
  ~ShardedSafetensorsWriter();
  ShardedSafetensorsWriter(const ShardedSafetensorsWriter&) = delete;
  ShardedSafetensorsWriter& operator=(const ShardedSafetensorsWriter&) = delete;

  // Copies one tensor to disk. UsageError (naming `dir` and the tensor) for a duplicate, empty or
  // "__metadata__" name, a negative dimension, nbytes != dtype size x numel or null data; IoError
  // when a file cannot be written.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes);
  // The __metadata__ of the shards written from now on (those already written keep theirs).
  void set_metadata(std::map<std::string, std::string> metadata) { metadata_ = std::move(metadata); }
  // Writes the last shard and names the files (above). Returns the shard file names in order.
  // UsageError when no tensor was added or finish() was called before.
  std::vector<std::string> finish();

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    int spill = 0;       // element size class: 0..3 for 8, 4, 2, 1 bytes
    int64_t offset = 0;  // byte offset inside that class's spill file
    int64_t nbytes = 0;
  };
  struct Spill {
    std::string path;
    int fd = -1;
    int64_t bytes = 0;
  };
  void flush();
  void close_spills() noexcept;
  void remove_spills() noexcept;

  std::string dir_;
  int64_t max_bytes_;
  TensorOrder order_;
  std::map<std::string, std::string> metadata_;
  std::vector<Pending> pending_;  // the current shard's tensors, in the order of add()
  int64_t pending_bytes_ = 0;
  Spill spill_[4];
  std::vector<std::pair<std::string, std::vector<std::string>>> shards_;  // file -> tensor names
  std::set<std::string> names_;
  bool finished_ = false;
};

// A directory assembled under `<final_dir>.tmp.<pid>` and renamed to final_dir by commit(), so
// final_dir is either absent or complete; destroyed uncommitted (an error, or Ctrl-C reaching a
// safe point: common/interrupt.h), the temporary directory is removed. Temporary directories of
// processes that no longer exist (a run killed outright, a crash) are removed by the constructor.
// commit() fsyncs every file and the directory, renames without replacing (RENAME_NOREPLACE) and
// fsyncs the parent, so after a power loss final_dir is absent or complete.
class StagingDirectory {
 public:
  // UsageError "--out: '<final_dir>' already exists; choose a new directory" when it exists;
  // IoError when the temporary directory cannot be created.
  explicit StagingDirectory(std::string final_dir);
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  const std::string& path() const { return tmp_dir_; }  // where to write
  const std::string& final_path() const { return final_dir_; }
  bool committed() const { return committed_; }
  // Renames the temporary directory to final_dir (UsageError if final_dir appeared meanwhile, even
  // in the instant before the rename; IoError if the rename or an fsync fails).
  void commit();

 private:
  std::string final_dir_;
  std::string tmp_dir_;
  bool committed_ = false;
};

}  // namespace resq
