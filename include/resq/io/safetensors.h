// Safetensors (HuggingFace format) reader over a read-only memory map, a sharded model-directory
// store and dtype conversion to float32/float64; the writers are in safetensors_writer.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "resq/io/dtype.h"
#include "resq/io/safetensors_writer.h"  // the writers (write_safetensors, sharded)

namespace resq {

// "[a, b]" ("[]" for a scalar), used in every shape message.
std::string format_shape(const std::vector<int64_t>& shape);

// One tensor inside a mapped file: `data` points at nbytes = dtype_size(dtype) * numel() bytes,
// little-endian, row-major. The pointer stays valid while the owning SafetensorsFile lives (a
// TensorStore keeps its files alive). Files written by HF or by write_safetensors() keep every
// tensor aligned to its element size; a file from another writer may not, so read through memcpy
// (as tensor_to_float32 does) unless alignment has been checked.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // [] for a scalar
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file it lives in, for messages

  // Product of the shape (1 for a scalar, 0 if any dimension is 0).
  int64_t numel() const;
};

// A safetensors file mapped read-only (MAP_PRIVATE). Everything is validated by open(); after
// that every view is safe to read. Non-copyable; shared through std::shared_ptr.
class SafetensorsFile {
 public:
  // Largest JSON header accepted (the HF library's own limit).
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

  // Maps and validates `path`. Throws IoError if it cannot be opened/mapped, FormatError (naming
  // the file, the tensor and what was expected vs found) for any malformed content: short file,
  // header length beyond the file or the cap, header not a JSON object, duplicate keys, entries
  // missing dtype/shape/data_offsets or of the wrong JSON type, unknown dtype, negative or
  // non-integer dimensions, shape/size overflow, end < begin, end beyond the data buffer,
  // byte size != dtype size x numel, overlapping byte ranges, non-string __metadata__ values.
  // Gaps between tensors and trailing bytes are accepted (HF's own writer never produces them).
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  // Throws FormatError "<path>: tensor '<name>' not found" if absent.
  const TensorView& get(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // The __metadata__ map ({} if absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Total file size in bytes.
  size_t file_size() const { return size_; }
  // Drops the resident pages of the read-only mapping (madvise MADV_DONTNEED): a reader that has
  // scanned the whole file (validation) gives the memory back; views stay valid and fault the
  // pages in again from the file when read.
  void release_pages() const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* mapping_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All the weights of a model directory (one file or HF shards), looked up by tensor name.
// Copyable and cheap to move; keeps the mapped files alive.
class TensorStore {
 public:
  TensorStore() = default;

  // `dir/model.safetensors.index.json` if present (its weight_map {tensor: shard file}; every
  // distinct shard is opened once), else `dir/model.safetensors`, else IoError "no
  // model.safetensors or model.safetensors.index.json in DIR". Index rules: weight_map must be a
  // non-empty object of strings; shard names must be relative paths that stay inside DIR (no
  // absolute path, no "." or ".." component, no empty component) -> FormatError; a missing
  // shard file -> IoError naming index, shard and tensor; a tensor of the index absent from its
  // shard, or a tensor name present in two shards -> FormatError. Tensors present in a shard but
  // not listed in weight_map are kept (transformers loads them too). Symlinked shards are
  // followed (the HF hub cache links snapshot files to ../../blobs).
  static TensorStore open_model_dir(const std::string& dir);

  // The union of the given files; a tensor name in two files -> FormatError. `source()` is the
  // single path, or the paths joined with ", ".
  static TensorStore open_files(const std::vector<std::string>& paths);

  bool contains(const std::string& name) const;
  // Throws FormatError "<source>: tensor '<name>' not found".
  const TensorView& get(const std::string& name) const;
  // get() + shape check; throws ShapeError "<file>: tensor 'x' has shape [a, b], expected [c, d]".
  const TensorView& require(const std::string& name, const std::vector<int64_t>& expected_shape) const;
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return tensors_.size(); }
  // The directory (open_model_dir) or file list (open_files), for messages.
  const std::string& source() const { return source_; }
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  void add_file(std::shared_ptr<SafetensorsFile> file);

  std::string source_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> tensors_;  // points into files_' maps (stable)
};

// Converts F32/F16/BF16/F64 elements to float (F64 rounds to nearest); `out` must hold
// view.numel() floats. Any other dtype -> ShapeError naming the tensor, file and dtype.
void tensor_to_float32(const TensorView& view, float* out);
// Same to double (exact for every accepted dtype); `out` holds view.numel() doubles.
void tensor_to_float64(const TensorView& view, double* out);
// Convenience: returns a new vector [numel] of floats.
std::vector<float> tensor_to_float32_vector(const TensorView& view);

}  // namespace resq
