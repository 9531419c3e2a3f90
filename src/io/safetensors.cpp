// Safetensors reader (mmap + full header validation), model-directory store (single file or HF
// shard index), conversion of float tensors to float32/float64, and the atomic HF-compatible writer.
#include "resq/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>

#include "resq/common/error.h"

namespace resq {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kMetadataKey = "__metadata__";

std::string errno_text() { return std::strerror(errno); }

std::string in_quotes(const std::string& s) { return "'" + s + "'"; }

// Little-endian u64 from 8 bytes, independent of the host byte order.
uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Closes a file descriptor on scope exit unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the result (close errors matter for written files).
  int close_now() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// Parses JSON text, also rejecting duplicate keys in any object (nlohmann would silently keep
// the last one, which would let two header entries claim the same tensor name).
json parse_json_strict(const char* begin, const char* end, const std::string& what) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  json::parser_callback_t callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  // nlohmann's lexer stops at a NUL byte as if the input ended there, which would accept
  // "{}\0garbage"; raw NULs are never valid JSON, so reject them first.
  if (const void* nul = std::memchr(begin, '\0', static_cast<size_t>(end - begin))) {
    throw FormatError(what + " is not valid JSON: NUL byte at offset " +
                      std::to_string(static_cast<const char*>(nul) - begin) +
                      " (padding must be spaces)");
  }
  json value;
  try {
    value = json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    throw FormatError(what + " is not valid JSON: " + e.what());
  }
  if (!duplicate.empty()) {
    throw FormatError(what + " has the key " + in_quotes(duplicate) +
                      " more than once (JSON keys must be unique)");
  }
  return value;
}

// Checked a * b for sizes; false on overflow.
bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

// Rank of a dtype in HF's Dtype enum (declared in increasing alignment order); the HF writer
// sorts tensors by decreasing rank, then by name, and so do we to produce identical files.
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
    throw FormatError(where + "\"dtype\" must be a string, found " + dtype.dump());
  }
  try {
    view.dtype = parse_dtype(dtype.get<std::string>());
  } catch (const FormatError& e) {
    throw FormatError(where + e.what());
  }

  const json& shape = entry["shape"];
  if (!shape.is_array()) {
    throw FormatError(where + "\"shape\" must be an array of non-negative integers, found " +
                      shape.dump());
  }
  uint64_t numel = 1;
  for (const json& dim : shape) {
    if (!dim.is_number_unsigned()) {
      const char* problem = dim.is_number_integer() ? "negative dimension " : "non-integer dimension ";
      throw FormatError(where + "\"shape\" " + shape.dump() + " has a " + problem + dim.dump() +
                        " (expected non-negative integers)");
    }
    const uint64_t d = dim.get<uint64_t>();
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || mul_overflows(numel, d, &numel)) {
      throw FormatError(where + "\"shape\" " + shape.dump() + " overflows a 64-bit element count");
    }
    view.shape.push_back(static_cast<int64_t>(d));
  }
  uint64_t nbytes = 0;
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      mul_overflows(numel, dtype_size(view.dtype), &nbytes)) {
    throw FormatError(where + "\"shape\" " + shape.dump() + " overflows a 64-bit byte count");
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    throw FormatError(where + "\"data_offsets\" must be [begin, end] with non-negative integers, found " +
                      offsets.dump());
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

// Writes all bytes or throws IoError (handles short writes and EINTR).
void write_all(int fd, const void* data, size_t nbytes, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (nbytes > 0) {
    const ssize_t n = ::write(fd, p, nbytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(path + ": write failed: " + errno_text());
    }
    p += n;
    nbytes -= static_cast<size_t>(n);
  }
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
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ------------------------------------------------------------------------------ SafetensorsFile

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;

  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw IoError(path + ": cannot open safetensors file: " + errno_text());
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) throw IoError(path + ": cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    throw FormatError(path + ": file is " + std::to_string(size) +
                      " bytes, shorter than the 8-byte safetensors header length");
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (mapping == MAP_FAILED) throw IoError(path + ": mmap failed: " + errno_text());
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
                            " must be a string, found " + m->dump());
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
  const std::string index_path = (root / kIndexFile).string();
  const std::string single_path = (root / kSingleFile).string();
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

  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw IoError(index_path + ": cannot open: " + errno_text());
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) throw IoError(index_path + ": read failed");
  const std::string body = text.str();
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
                        " must be a shard file name string, found " + it->dump());
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

// ------------------------------------------------------------------------------ writer

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // 1. Validate everything before touching the disk.
  std::set<std::string> seen;
  for (const TensorToWrite& t : tensors) {
    const std::string where = path + ": tensor " + in_quotes(t.name) + ": ";
    if (t.name.empty()) throw UsageError(path + ": a tensor has an empty name");
    if (t.name == kMetadataKey) throw UsageError(where + "the name is reserved for file metadata");
    if (!seen.insert(t.name).second) throw UsageError(where + "name given more than once");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw UsageError(where + "shape " + format_shape(t.shape) + " has a negative dimension");
      if (mul_overflows(numel, static_cast<uint64_t>(d), &numel)) {
        throw UsageError(where + "shape " + format_shape(t.shape) + " overflows a 64-bit element count");
      }
    }
    uint64_t expected = 0;
    if (mul_overflows(numel, dtype_size(t.dtype), &expected) || t.nbytes != expected) {
      throw UsageError(where + "nbytes is " + std::to_string(t.nbytes) + ", expected " +
                       std::to_string(expected) + " (" + dtype_name(t.dtype) + " x " +
                       format_shape(t.shape) + ")");
    }
    if (t.nbytes > 0 && t.data == nullptr) throw UsageError(where + "data is null");
  }

  // 2. Layout as HF's serializer: decreasing alignment class, then name; contiguous offsets.
  std::vector<const TensorToWrite*> order;
  order.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorToWrite* a, const TensorToWrite* b) {
    const int ra = hf_dtype_rank(a->dtype), rb = hf_dtype_rank(b->dtype);
    if (ra != rb) return ra > rb;
    return a->name < b->name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) meta[kv.first] = kv.second;
    header[kMetadataKey] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const TensorToWrite* t : order) {
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(t->dtype);
    entry["shape"] = t->shape;
    entry["data_offsets"] = {offset, offset + t->nbytes};
    offset += t->nbytes;
    header[t->name] = std::move(entry);
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(path + ": tensor names and metadata must be valid UTF-8: " + e.what());
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_text.size()) >> (8 * i));

  // 3. Write a temporary file next to the target, then rename it into place.
  const std::string tmp_path = path + ".tmp." + std::to_string(::getpid());
  FdGuard fd(::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw IoError(tmp_path + ": cannot create temporary file for " + path + ": " + errno_text());
  try {
    write_all(fd.get(), prefix, sizeof prefix, tmp_path);
    write_all(fd.get(), header_text.data(), header_text.size(), tmp_path);
    for (const TensorToWrite* t : order) {
      if (t->nbytes) write_all(fd.get(), t->data, t->nbytes, tmp_path);
    }
    if (::fsync(fd.get()) != 0) throw IoError(tmp_path + ": fsync failed: " + errno_text());
    if (fd.close_now() != 0) throw IoError(tmp_path + ": close failed: " + errno_text());
    if (::rename(tmp_path.c_str(), path.c_str()) != 0) {
      throw IoError(path + ": cannot rename " + tmp_path + " into place: " + errno_text());
    }
  } catch (...) {
    ::unlink(tmp_path.c_str());
    throw;
  }
  // Make the rename itself durable; best effort (some filesystems refuse fsync on directories).
  const fs::path parent = fs::path(path).parent_path();
  FdGuard dir_fd(::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() >= 0) ::fsync(dir_fd.get());
}

}  // namespace resq
