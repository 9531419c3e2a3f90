// The safetensors writers (include/resq/io/safetensors_writer.h): one header encoder, one atomic
// file writer, write_safetensors on top of them, the streaming sharded writer and the staging directory.
#include "resq/io/safetensors_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "posix_io.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/interrupt.h"
#include "resq/io/safetensors.h"

namespace resq {

namespace fs = std::filesystem;
using io_detail::FdGuard;
using io_detail::in_quotes;
using io_detail::mul_overflows;

namespace {

constexpr const char* kMetadataKey = "__metadata__";

// Rank of a dtype in HF's Dtype enum (declared in increasing alignment order); the HF writer
// sorts tensors by decreasing rank, then by name, and so does TensorOrder::kHuggingFace.
int hf_dtype_rank(DType dtype) {
  switch (dtype) {
    case DType::BOOL: return 0;
    case DType::U8: return 1;
    case DType::I8: return 2;
    case DType::I16: return 5;
    case DType::F16: return 7;
    case DType::BF16: return 8;
    case DType::I32: return 9;
    case DType::F32: return 11;
    case DType::F64: return 12;
    case DType::I64: return 13;
  }
  return -1;
}

// Element size class of the sharded writer's spill files: 8 -> 0, 4 -> 1, 2 -> 2, 1 -> 3 bytes.
int size_class(DType dtype) {
  const size_t es = dtype_size(dtype);
  return es >= 8 ? 0 : es == 4 ? 1 : es == 2 ? 2 : 3;
}

// UsageError unless the tensor can be written: `file` names the destination in the message.
void check_tensor(const std::string& file, const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                  const void* data, size_t nbytes) {
  const std::string where = file + ": tensor " + in_quotes(name) + ": ";
  if (name.empty()) throw UsageError(file + ": a tensor has an empty name");
  if (name == kMetadataKey) throw UsageError(where + "the name is reserved for file metadata");
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw UsageError(where + "shape " + format_shape(shape) + " has a negative dimension");
    if (mul_overflows(numel, static_cast<uint64_t>(d), &numel)) {
      throw UsageError(where + "shape " + format_shape(shape) + " overflows a 64-bit element count");
    }
  }
  uint64_t expected = 0;
  if (mul_overflows(numel, dtype_size(dtype), &expected) || nbytes != expected) {
    throw UsageError(where + "nbytes is " + std::to_string(nbytes) + ", expected " + std::to_string(expected) + " (" +
                     dtype_name(dtype) + " x " + format_shape(shape) + ")");
  }
  if (nbytes > 0 && data == nullptr) throw UsageError(where + "data is null");
}

// One header entry, in data order.
struct HeaderEntry {
  const std::string* name;
  DType dtype;
  const std::vector<int64_t>* shape;
  uint64_t nbytes;
};

// The bytes before the data: 8-byte little-endian header length, then the compact JSON header
// ("__metadata__" first when non-empty, then the tensors with contiguous data_offsets in the given
// order) padded with spaces to a multiple of 8.
std::string encode_header(const std::vector<HeaderEntry>& entries, const std::map<std::string, std::string>& metadata,
                          const std::string& path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const HeaderEntry& e : entries) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(e.dtype);
    entry["shape"] = *e.shape;
    entry["data_offsets"] = {offset, offset + e.nbytes};
    offset += e.nbytes;
    header[*e.name] = std::move(entry);
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(path + ": tensor names and metadata must be valid UTF-8: " + e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  return out + text;
}

// Writes `head` and then whatever write_data(fd, tmp_path) appends to `path` through common's atomic,
// fsynced write (a temporary name renamed into place, removed on failure or interruption).
void write_file_atomically(const std::string& path, const std::string& head,
                           const std::function<void(int fd, const std::string& tmp_path)>& write_data) {
  resq::write_file_atomically(
      path,
      [&](int fd, const std::string& tmp_path) {
        write_all_fd(fd, head.data(), head.size(), tmp_path);
        write_data(fd, tmp_path);
      },
      "safetensors file");
}

bool hf_before(DType a_dtype, const std::string& a_name, DType b_dtype, const std::string& b_name) {
  const int ra = hf_dtype_rank(a_dtype), rb = hf_dtype_rank(b_dtype);
  if (ra != rb) return ra > rb;
  return a_name < b_name;
}

}  // namespace

// ------------------------------------------------------------------------------ one file

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Validate everything before touching the disk.
  std::set<std::string> seen;
  for (const TensorToWrite& t : tensors) {
    check_tensor(path, t.name, t.dtype, t.shape, t.data, t.nbytes);
    if (!seen.insert(t.name).second) throw UsageError(path + ": tensor " + in_quotes(t.name) + ": name given more than once");
  }
  std::vector<const TensorToWrite*> order;
  order.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const TensorToWrite* a, const TensorToWrite* b) { return hf_before(a->dtype, a->name, b->dtype, b->name); });
  std::vector<HeaderEntry> entries;
  for (const TensorToWrite* t : order) entries.push_back({&t->name, t->dtype, &t->shape, t->nbytes});
  write_file_atomically(path, encode_header(entries, metadata, path), [&](int fd, const std::string& tmp_path) {
    for (const TensorToWrite* t : order) {
      if (t->nbytes) write_all_fd(fd, t->data, t->nbytes, tmp_path);
    }
  });
}

// ------------------------------------------------------------------------------ sharded

ShardedSafetensorsWriter::ShardedSafetensorsWriter(std::string dir, int64_t max_shard_bytes, TensorOrder order,
                                                   std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), max_bytes_(max_shard_bytes), order_(order), metadata_(std::move(metadata)) {}

ShardedSafetensorsWriter::~ShardedSafetensorsWriter() { remove_spills(); }

void ShardedSafetensorsWriter::close_spills() noexcept {
  for (Spill& sp : spill_) {
    if (sp.fd >= 0) ::close(sp.fd);
    sp.fd = -1;
  }
}

void ShardedSafetensorsWriter::remove_spills() noexcept {
  close_spills();
  for (Spill& sp : spill_) {
    if (!sp.path.empty()) ::unlink(sp.path.c_str());
    sp = Spill{};
  }
}

void ShardedSafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                                   size_t nbytes) {
  throw_if_interrupted();  // a safe point: the destructors remove the spill files and the staging directory
  if (finished_) throw UsageError(dir_ + ": tensor " + in_quotes(name) + " added after finish()");
  check_tensor(dir_, name, dtype, shape, data, nbytes);
  if (names_.count(name)) throw UsageError(dir_ + ": tensor " + in_quotes(name) + ": name given more than once");
  if (!pending_.empty() && pending_bytes_ + static_cast<int64_t>(nbytes) > max_bytes_) flush();
  const int cls = size_class(dtype);
  Spill& sp = spill_[cls];
  if (sp.fd < 0) {
    sp.path = (fs::path(dir_) / ("spill-" + std::to_string(shards_.size()) + "-" + std::to_string(cls))).string();
    sp.fd = ::open(sp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sp.fd < 0) throw IoError(sp.path + ": cannot create a spill file: " + errno_text(errno));
    sp.bytes = 0;
  }
  if (nbytes) write_all_fd(sp.fd, data, nbytes, sp.path);
  pending_.push_back(Pending{name, dtype, shape, cls, sp.bytes, static_cast<int64_t>(nbytes)});
  sp.bytes += static_cast<int64_t>(nbytes);
  pending_bytes_ += static_cast<int64_t>(nbytes);
  names_.insert(name);
}

// Assembles shard-<i>.safetensors from the spill files: the header, then every pending tensor's
// bytes in the file's order, copied through a small buffer (no tensor is held in memory).
void ShardedSafetensorsWriter::flush() {
  if (pending_.empty()) return;
  close_spills();
  std::vector<const Pending*> order;
  for (const Pending& p : pending_) order.push_back(&p);
  if (order_ == TensorOrder::kHuggingFace) {
    std::sort(order.begin(), order.end(),
              [](const Pending* a, const Pending* b) { return hf_before(a->dtype, a->name, b->dtype, b->name); });
  } else {
    std::stable_sort(order.begin(), order.end(), [](const Pending* a, const Pending* b) { return a->spill < b->spill; });
  }
  std::vector<HeaderEntry> entries;
  std::vector<std::string> names;
  for (const Pending* p : order) {
    entries.push_back({&p->name, p->dtype, &p->shape, static_cast<uint64_t>(p->nbytes)});
    names.push_back(p->name);
  }
  const std::string file = "shard-" + std::to_string(shards_.size()) + ".safetensors";
  const std::string path = (fs::path(dir_) / file).string();
  write_file_atomically(path, encode_header(entries, metadata_, path), [&](int out, const std::string& tmp_path) {
    int in[4] = {-1, -1, -1, -1};
    try {
      for (int c = 0; c < 4; ++c) {
        if (spill_[c].path.empty()) continue;
        in[c] = ::open(spill_[c].path.c_str(), O_RDONLY | O_CLOEXEC);
        if (in[c] < 0) throw IoError(spill_[c].path + ": cannot reopen the spill file: " + errno_text(errno));
      }
      std::vector<uint8_t> buf(size_t{8} << 20);
      for (const Pending* p : order) {
        throw_if_interrupted();
        int64_t copied = 0;
        while (copied < p->nbytes) {
          const size_t want = static_cast<size_t>(std::min<int64_t>(p->nbytes - copied, static_cast<int64_t>(buf.size())));
          const ssize_t n = ::pread(in[p->spill], buf.data(), want, static_cast<off_t>(p->offset + copied));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) throw IoError(spill_[p->spill].path + ": short read while assembling " + tmp_path);
          write_all_fd(out, buf.data(), static_cast<size_t>(n), tmp_path);
          copied += n;
        }
      }
    } catch (...) {
      for (int fd : in)
        if (fd >= 0) ::close(fd);
      throw;
    }
    for (int fd : in)
      if (fd >= 0) ::close(fd);
  });
  remove_spills();
  shards_.emplace_back(file, std::move(names));
  pending_.clear();
  pending_bytes_ = 0;
}

namespace {

// rename(2) inside the staging directory, with the paths in the IoError.
void rename_in_place(const fs::path& from, const fs::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    throw IoError(to.string() + ": cannot rename " + from.string() + " to it: " + errno_text(errno));
  }
}

}  // namespace

std::vector<std::string> ShardedSafetensorsWriter::finish() {
  if (finished_) throw UsageError(dir_ + ": finish() called twice");
  flush();
  finished_ = true;
  const fs::path dir(dir_);
  std::vector<std::string> files;
  if (shards_.empty()) throw UsageError(dir_ + ": no tensors were added");
  if (shards_.size() == 1) {
    rename_in_place(dir / shards_[0].first, dir / kSafetensorsSingleFile);
    return {kSafetensorsSingleFile};
  }
  nlohmann::json weight_map = nlohmann::json::object();
  const size_t n = shards_.size();
  int64_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
    rename_in_place(dir / shards_[i].first, dir / name);
    std::error_code ec;
    const auto size = fs::file_size(dir / name, ec);
    if (ec) throw IoError((dir / name).string() + ": cannot read its size: " + ec.message());
    total += static_cast<int64_t>(size);
    for (const auto& t : shards_[i].second) weight_map[t] = name;
    files.push_back(name);
  }
  const fs::path index = dir / kSafetensorsIndexFile;
  resq::write_file_atomically(
      index.string(), nlohmann::json({{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}).dump(2) + "\n",
      "shard index");
  return files;
}

// ------------------------------------------------------------------------------ staging directory

StagingDirectory::StagingDirectory(std::string final_dir) : final_dir_(std::move(final_dir)) {
  if (final_dir_.empty()) throw UsageError("--out: empty output directory name");
  std::error_code ec;
  if (fs::exists(final_dir_, ec)) throw UsageError("--out: '" + final_dir_ + "' already exists; choose a new directory");
  // What interrupted runs left beside final_dir (their processes are gone) is removed first.
  remove_stale_temporaries(final_dir_);
  tmp_dir_ = temporary_path(final_dir_);
  const fs::path parent = fs::path(tmp_dir_).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) throw IoError(parent.string() + ": cannot create the parent of the output directory: " + ec.message());
  if (::mkdir(tmp_dir_.c_str(), 0755) != 0) {
    throw IoError(tmp_dir_ + ": cannot create the temporary output directory: " + errno_text(errno));
  }
}

StagingDirectory::~StagingDirectory() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
  }
}

void StagingDirectory::commit() {
  if (committed_) throw UsageError(final_dir_ + ": committed twice");
  throw_if_interrupted();  // the last point where an interrupted run leaves nothing behind
  // Durability before the rename: every file's data and the directory's entries, so that after a
  // power loss final_dir is either absent or complete.
  std::error_code ec;
  for (fs::recursive_directory_iterator it(tmp_dir_, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) fsync_path(it->path().string());
  }
  if (ec) throw IoError(tmp_dir_ + ": cannot list the temporary output directory: " + ec.message());
  fsync_path(tmp_dir_);
  // No-replace: a directory created at final_dir since the constructor's check is never replaced.
  if (!rename_no_replace(tmp_dir_, final_dir_)) {
    throw UsageError("--out: '" + final_dir_ + "' already exists; choose a new directory");
  }
  committed_ = true;
  const fs::path parent = fs::path(final_dir_).parent_path();
  fsync_path(parent.empty() ? "." : parent.string());
}

}  // namespace resq
