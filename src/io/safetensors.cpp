// Safetensors reader (mmap + full header validation), model-directory store (single file or HF
// shard index) and conversion of float tensors to float32/float64 (the writer: safetensors_writer.cpp).
#include "resq/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>
#include <utility>

#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/json_fields.h"
#include "posix_io.h"

namespace resq {

namespace fs = std::filesystem;
using nlohmann::json;

using io_detail::FdGuard;
using io_detail::in_quotes;
using io_detail::mul_overflows;

namespace {

constexpr const char* kMetadataKey = "__metadata__";

// Little-endian u64 from 8 bytes, independent of the host byte order.
uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Header and index JSON: duplicate keys are refused (nlohmann would keep the last one, which would
// let two header entries claim the same tensor name).
json parse_json_strict(const char* begin, const char* end, const std::string& what) {
  return parse_json(std::string_view(begin, static_cast<size_t>(end - begin)), what,
                    JsonParseOptions{JsonErrorKind::kFormat, /*unique_keys=*/true});
}

// Parses one header entry into a view (data pointer set by the caller). `data_size` is the size
// of the byte buffer after the header. Throws FormatError "<path>: tensor 'name': ...".
TensorView parse_entry(const std::string& path, const std::string& name, const json& entry,
                       uint64_t data_size, uint64_t* begin_out, uint64_t* end_out) {
  const std::string where = path + ": tensor " + in_quotes(name) + ": ";
  if (!entry.is_object()) {
    throw FormatError(where + "header entry must be a JSON object, found " + entry.type_name());
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) {
      throw FormatError(where + "header entry has no \"" + field +
                        "\" (expected \"dtype\", \"shape\" and \"data_offsets\")");
    }
  }
  TensorView view;
  view.name = name;
  view.file = path;

  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) {
    throw FormatError(where + "\"dtype\" must be a string, found " + json_excerpt(dtype));
  }
  try {
    view.dtype = parse_dtype(dtype.get<std::string>());
  } catch (const FormatError& e) {
    throw FormatError(where + e.what());
  }

  const json& shape = entry["shape"];
  if (!shape.is_array()) {
    throw FormatError(where + "\"shape\" must be an array of non-negative integers, found " +
                      json_excerpt(shape));
  }
  uint64_t numel = 1;
  for (const json& dim : shape) {
    if (!dim.is_number_unsigned()) {
      const char* problem = dim.is_number_integer() ? "negative dimension " : "non-integer dimension ";
      throw FormatError(where + "\"shape\" " + json_excerpt(shape) + " has a " + problem + json_excerpt(dim) +
                        " (expected non-negative integers)");
    }
    const uint64_t d = dim.get<uint64_t>();
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || mul_overflows(numel, d, &numel)) {
      throw FormatError(where + "\"shape\" " + json_excerpt(shape) + " overflows a 64-bit element count");
    }
    view.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes = 0;
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      mul_overflows(numel, dtype_size(view.dtype), &nbytes)) {
    throw FormatError(where + "\"shape\" " + json_excerpt(shape) + " overflows a 64-bit byte count");
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    throw FormatError(where + "\"data_offsets\" must be [begin, end] with non-negative integers, found " +
                      json_excerpt(offsets));
  }
  const uint64_t begin = offsets[0].get<uint64_t>();
  const uint64_t end = offsets[1].get<uint64_t>();
  if (end < begin) {
    throw FormatError(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                      "] has end < begin");
  }
  if (end > data_size) {
    throw FormatError(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                      "] end beyond the data buffer of " + std::to_string(data_size) + " bytes");
  }
  if (end - begin != nbytes) {
    throw FormatError(where + "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                      "] span " + std::to_string(end - begin) + " bytes, expected " +
                      std::to_string(nbytes) + " (" + dtype_name(view.dtype) + " x " +
                      format_shape(view.shape) + ")");
  }
  view.nbytes = static_cast<size_t>(nbytes);
  *begin_out = begin;
  *end_out = end;
  return view;
}

// True if `shard` is a relative path that cannot leave the directory it is joined to.
bool is_safe_relative_path(const std::string& shard) {
  if (shard.empty() || shard.front() == '/' || shard.find('\0') != std::string::npos) return false;
  size_t start = 0;
  while (true) {
    const size_t slash = shard.find('/', start);
    const std::string part = shard.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string::npos) return true;
    start = slash + 1;
  }
}

}  // namespace

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

int64_t TensorView::numel() const {
  // Views read from a file have validated shapes; one built by hand may not: a negative dimension
  // or a product beyond int64 is a ShapeError, not signed overflow.
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) {
      throw ShapeError(file + ": tensor " + in_quotes(name) + " has shape " + format_shape(shape) +
                       " (a negative dimension or more than 2^63 elements)");
    }
  }
  return n;
}

// ------------------------------------------------------------------------------ SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(path + ": cannot open safetensors file: " + errno_text(errno));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw IoError(path + ": cannot stat: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    throw FormatError(path + ": file is " + std::to_string(size) +
                      " bytes, shorter than the 8-byte safetensors header length");
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (mapping == MAP_FAILED) throw IoError(path + ": mmap failed: " + errno_text(errno));
  file->mapping_ = mapping;  // owned from here on: the destructor unmaps, also on a throw below
  file->size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(mapping);

  // Header: u64 length, then that many bytes of JSON.
  const uint64_t header_len = read_u64_le(bytes);
  if (header_len > kMaxHeaderBytes) {
    throw FormatError(path + ": header length " + std::to_string(header_len) + " exceeds the " +
                      std::to_string(kMaxHeaderBytes) + "-byte limit");
  }
  if (header_len > size - 8) {
    throw FormatError(path + ": header length " + std::to_string(header_len) + " but only " +
                      std::to_string(size - 8) + " bytes follow the 8-byte length");
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes + 8);
  const json header = parse_json_strict(header_begin, header_begin + header_len, path + ": header");
  if (!header.is_object()) {
    throw FormatError(path + ": header must be a JSON object, found " + header.type_name());
  }

  const uint8_t* data = bytes + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;
  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    if (key == kMetadataKey) {
      if (it->is_null()) continue;  // HF reads a null __metadata__ as absent
      if (!it->is_object()) {
        throw FormatError(path + ": \"__metadata__\" must be an object of strings, found " +
                          it->type_name());
      }
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          throw FormatError(path + ": \"__metadata__\" value for key " + in_quotes(m.key()) +
                            " must be a string, found " + json_excerpt(*m));
        }
        file->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    uint64_t begin = 0, end = 0;
    TensorView view = parse_entry(path, key, *it, data_size, &begin, &end);
    view.data = data + begin;
    auto inserted = file->tensors_.emplace(key, std::move(view));
    if (begin != end) ranges.push_back({begin, end, &inserted.first->first});
  }

  // Overlap check on the non-empty ranges (empty tensors occupy no bytes).
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const Range& prev = ranges[i - 1];
    const Range& cur = ranges[i];
    if (cur.begin < prev.end) {
      throw FormatError(path + ": tensor " + in_quotes(*cur.name) + ": data_offsets [" +
                        std::to_string(cur.begin) + ", " + std::to_string(cur.end) +
                        "] overlap tensor " + in_quotes(*prev.name) + " [" + std::to_string(prev.begin) +
                        ", " + std::to_string(prev.end) + "] (expected disjoint byte ranges)");
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

void SafetensorsFile::release_pages() const {
  if (mapping_ != nullptr && size_ > 0) ::madvise(mapping_, size_, MADV_DONTNEED);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw FormatError(path_ + ": tensor " + in_quotes(name) + " not found");
  return it->second;
}

// ------------------------------------------------------------------------------ TensorStore

void TensorStore::add_file(std::shared_ptr<SafetensorsFile> file) {
  for (const auto& kv : file->tensors()) {
    auto inserted = tensors_.emplace(kv.first, &kv.second);
    if (!inserted.second) {
      throw FormatError(source_ + ": tensor " + in_quotes(kv.first) + " appears in both " +
                        inserted.first->second->file + " and " + file->path() +
                        " (expected each tensor in exactly one file)");
    }
  }
  files_.push_back(std::move(file));
}

TensorStore TensorStore::open_files(const std::vector<std::string>& paths) {
  TensorStore store;
  for (size_t i = 0; i < paths.size(); ++i) store.source_ += (i ? ", " : "") + paths[i];
  for (const std::string& path : paths) store.add_file(SafetensorsFile::open(path));
  return store;
}

TensorStore TensorStore::open_model_dir(const std::string& dir) {
  const fs::path root(dir);
  const std::string index_path = (root / kSafetensorsIndexFile).string();
  const std::string single_path = (root / kSafetensorsSingleFile).string();
  std::error_code ec;

  TensorStore store;
  store.source_ = dir;
  if (!fs::exists(index_path, ec)) {
    if (!fs::exists(single_path, ec)) {
      throw IoError("no model.safetensors or model.safetensors.index.json in " + dir);
    }
    store.add_file(SafetensorsFile::open(single_path));
    return store;
  }

  const std::string body = read_file(index_path, "shard index");
  const json index = parse_json_strict(body.data(), body.data() + body.size(), index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw FormatError(index_path + ": expected a JSON object with a \"weight_map\" object");
  }
  const json& weight_map = index["weight_map"];
  if (weight_map.empty()) throw FormatError(index_path + ": \"weight_map\" is empty (expected tensor -> shard entries)");

  // shard -> tensors the index places in it; std::map opens shards in a deterministic order.
  std::map<std::string, std::vector<std::string>> shards;
  for (auto it = weight_map.begin(); it != weight_map.end(); ++it) {
    if (!it->is_string()) {
      throw FormatError(index_path + ": weight_map entry for tensor " + in_quotes(it.key()) +
                        " must be a shard file name string, found " + json_excerpt(*it));
    }
    const std::string shard = it->get<std::string>();
    if (!is_safe_relative_path(shard)) {
      throw FormatError(index_path + ": weight_map entry for tensor " + in_quotes(it.key()) +
                        " names shard " + in_quotes(shard) +
                        "; expected a relative path inside the model directory (no absolute path, "
                        "no '.', '..' or empty component)");
    }
    shards[shard].push_back(it.key());
  }

  for (const auto& kv : shards) {
    const std::string shard_path = (root / kv.first).string();
    if (!fs::is_regular_file(shard_path, ec)) {
      throw IoError(index_path + ": shard " + in_quotes(kv.first) + " (listed for tensor " +
                    in_quotes(kv.second.front()) + ") does not exist or is not a file: " + shard_path);
    }
    auto file = SafetensorsFile::open(shard_path);
    for (const std::string& name : kv.second) {
      if (!file->contains(name)) {
        throw FormatError(index_path + ": tensor " + in_quotes(name) + " is mapped to shard " +
                          in_quotes(kv.first) + " but " + shard_path + " does not contain it");
      }
    }
    store.add_file(std::move(file));
  }
  return store;
}

bool TensorStore::contains(const std::string& name) const { return tensors_.count(name) != 0; }

const TensorView& TensorStore::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw FormatError(source_ + ": tensor " + in_quotes(name) + " not found");
  return *it->second;
}

const TensorView& TensorStore::require(const std::string& name,
                                       const std::vector<int64_t>& expected_shape) const {
  const TensorView& view = get(name);
  if (view.shape != expected_shape) {
    throw ShapeError(view.file + ": tensor " + in_quotes(name) + " has shape " + format_shape(view.shape) +
                     ", expected " + format_shape(expected_shape));
  }
  return view;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

// ------------------------------------------------------------------------------ conversion

namespace {

// Throws ShapeError unless the view's byte count matches its dtype and shape (views built by
// hand, not read from a file, could disagree).
void check_view_size(const TensorView& view) {
  const uint64_t expected = static_cast<uint64_t>(view.numel()) * dtype_size(view.dtype);
  if (view.nbytes != expected || (view.nbytes > 0 && view.data == nullptr)) {
    throw ShapeError(view.file + ": tensor " + in_quotes(view.name) + " has " +
                     std::to_string(view.nbytes) + " bytes, expected " + std::to_string(expected) +
                     " (" + dtype_name(view.dtype) + " x " + format_shape(view.shape) + ")");
  }
}

[[noreturn]] void throw_not_floating(const TensorView& view, const char* target) {
  throw ShapeError(view.file + ": tensor " + in_quotes(view.name) + " has dtype " + dtype_name(view.dtype) +
                   ", expected F32, F16, BF16 or F64 for conversion to " + target);
}

// out[i] = convert(element i) for 16-bit elements; memcpy keeps unaligned data legal.
template <typename T, typename Convert>
void convert_u16(const TensorView& view, T* out, Convert convert) {
  const size_t n = view.nbytes / 2;
  for (size_t i = 0; i < n; ++i) {
    uint16_t bits;
    std::memcpy(&bits, view.data + 2 * i, 2);
    out[i] = static_cast<T>(convert(bits));
  }
}

template <typename T>
void convert_float(const TensorView& view, T* out, const char* target) {
  check_view_size(view);
  const size_t n = static_cast<size_t>(view.numel());
  switch (view.dtype) {
    case DType::F32:
      if constexpr (std::is_same_v<T, float>) {
        if (n) std::memcpy(out, view.data, n * sizeof(float));
      } else {
        for (size_t i = 0; i < n; ++i) {
          float v;
          std::memcpy(&v, view.data + 4 * i, 4);
          out[i] = v;
        }
      }
      return;
    case DType::F64:
      if constexpr (std::is_same_v<T, double>) {
        if (n) std::memcpy(out, view.data, n * sizeof(double));
      } else {
        for (size_t i = 0; i < n; ++i) {
          double v;
          std::memcpy(&v, view.data + 8 * i, 8);
          out[i] = static_cast<T>(v);
        }
      }
      return;
    case DType::F16:
      convert_u16(view, out, fp16_to_float);
      return;
    case DType::BF16:
      convert_u16(view, out, bf16_to_float);
      return;
    default:
      throw_not_floating(view, target);
  }
}

}  // namespace

void tensor_to_float32(const TensorView& view, float* out) { convert_float(view, out, "float32"); }

void tensor_to_float64(const TensorView& view, double* out) { convert_float(view, out, "float64"); }

std::vector<float> tensor_to_float32_vector(const TensorView& view) {
  check_view_size(view);
  std::vector<float> out(static_cast<size_t>(view.numel()));
  tensor_to_float32(view, out.data());
  return out;
}

}  // namespace resq
