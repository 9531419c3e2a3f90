// The resq packed checkpoint: resq_config.json (de)serialization with strict validation, the atomic
// sharded writer and the validating reader (docs/FORMAT.md part 2).
#include "resq/format/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "resq/common/error.h"

namespace resq::format {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string read_file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Strict JSON field access: every accessor names the file and the key path on error.
class Fields {
 public:
  Fields(const json& j, std::string source, std::string path) : j_(j), source_(std::move(source)), path_(std::move(path)) {
    if (!j_.is_object()) fail(path_, "expected an object");
  }
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw FormatError(source_ + ": '" + key + "': " + what);
  }
  std::string key(const std::string& k) const { return path_.empty() ? k : path_ + "." + k; }
  const json& at(const std::string& k) const {
    used_.insert(k);
    auto it = j_.find(k);
    if (it == j_.end()) fail(key(k), "missing");
    return *it;
  }
  bool has(const std::string& k) const { return j_.contains(k); }
  int64_t integer(const std::string& k, int64_t lo, int64_t hi) const {
    const json& v = at(k);
    if (!v.is_number_integer()) fail(key(k), "expected an integer");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) fail(key(k), "value " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }
  double number(const std::string& k, double lo, double hi) const {
    const json& v = at(k);
    if (!v.is_number()) fail(key(k), "expected a number");
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi)) fail(key(k), "value " + std::to_string(x) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }
  bool boolean(const std::string& k) const {
    const json& v = at(k);
    if (!v.is_boolean()) fail(key(k), "expected true or false");
    return v.get<bool>();
  }
  std::string string(const std::string& k) const {
    const json& v = at(k);
    if (!v.is_string()) fail(key(k), "expected a string");
    return v.get<std::string>();
  }
  Fields object(const std::string& k) const { return Fields(at(k), source_, key(k)); }
  // Unknown keys are errors: a misspelled field must not be silently ignored.
  void no_unknown_keys() const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (!used_.count(it.key())) fail(key(it.key()), "unknown key");
    }
  }

 private:
  const json& j_;
  std::string source_;
  std::string path_;
  mutable std::set<std::string> used_;
};

int bits_min(int bits) { return -(1 << (bits - 1)); }
int bits_max(int bits) { return (1 << (bits - 1)) - 1; }

std::string shape_text(const std::vector<int64_t>& s) { return format_shape(s); }

}  // namespace

// ------------------------------------------------------------------ sizes

double CheckpointSizes::bits_per_quantized_weight() const {
  if (quantized_weights == 0) return 0.0;
  return 8.0 * static_cast<double>(packed_weight_bytes + packed_scale_bytes) / static_cast<double>(quantized_weights);
}

double CheckpointSizes::compression_vs_bf16() const {
  if (file_bytes == 0) return 0.0;
  return 2.0 * static_cast<double>(parameters) / static_cast<double>(file_bytes);
}

// ------------------------------------------------------------------ metadata

json CheckpointMeta::to_json() const {
  json sites_json = json::object();
  for (const auto& [kind, s] : sites) {
    json high = {{"rule", high_rule_name(s.high_rule)}, {"count", s.high_count}};
    if (s.high_rule == HighRule::kPerHead) high["group"] = s.high_group;
    sites_json[site_name(kind)] = {
        {"out_features", s.N},
        {"in_features", s.K},
        {"high", high},
        {"bias", s.has_bias},
        {"storage", s.storage == LinearStorage::kPacked ? "packed" : "dense"},
        {"weight_bits", {{"low", s.weight_bits_low}, {"high", s.weight_bits_high}}},
        {"activations",
         {{"enabled", s.activations.enabled},
          {"bits_low", s.activations.bits_low},
          {"bits_high", s.activations.bits_high},
          {"clip_ratio", s.activations.clip_ratio},
          {"high_count", s.activations.high_count}}}};
  }
  json online_json = {{"qk_rotation", online.qk_rotation}, {"down_hadamard", online.down_hadamard}};
  if (online.down_hadamard) {
    online_json["hadamard"] = {{"n", online.hadamard_n},
                               {"pow2", online.hadamard_pow2},
                               {"block", online.hadamard_block},
                               {"construction", online.hadamard_construction}};
  }
  return {{"format", kCheckpointFormatName},
          {"format_version", format_version},
          {"kernel_layout_version", kernel_layout_version},
          {"nibble_order", "low_first"},
          {"r", r},
          {"r_h", r_h},
          {"globals_dtype", dtype_name(globals_dtype)},
          {"sites", sites_json},
          {"kv_cache",
           {{"enabled", kv.enabled},
            {"bits_low", kv.bits_low},
            {"bits_high", kv.bits_high},
            {"high_count", r_h},
            {"k_clip_ratio", kv.k_clip_ratio},
            {"v_clip_ratio", kv.v_clip_ratio}}},
          {"online", online_json},
          {"recipe", recipe.is_null() ? json::object() : recipe},
          {"provenance", provenance.is_null() ? json::object() : provenance}};
}

CheckpointMeta CheckpointMeta::from_json(const json& j, const ModelConfig& model, const std::string& src) {
  CheckpointMeta m;
  m.model = model;
  Fields f(j, src, "");
  const std::string name = f.string("format");
  if (name != kCheckpointFormatName) f.fail("format", "expected \"" + std::string(kCheckpointFormatName) + "\", got \"" + name + "\"");
  m.format_version = static_cast<int>(f.integer("format_version", 0, 1 << 30));
  if (m.format_version != kCheckpointVersion) {
    throw FormatError(src + ": checkpoint format_version " + std::to_string(m.format_version) + " is not supported (this resq reads version " +
                      std::to_string(kCheckpointVersion) + ")");
  }
  m.kernel_layout_version = static_cast<int>(f.integer("kernel_layout_version", 0, 1 << 30));
  if (m.kernel_layout_version != kFormatVersion) {
    throw FormatError(src + ": kernel_layout_version " + std::to_string(m.kernel_layout_version) + " is not supported (expected " +
                      std::to_string(kFormatVersion) + ")");
  }
  if (f.string("nibble_order") != "low_first") f.fail("nibble_order", "expected \"low_first\"");
  const ModelConfig& c = model;
  m.r = f.integer("r", 0, c.hidden_size);
  m.r_h = f.integer("r_h", 0, c.head_dim);
  try {
    m.globals_dtype = parse_dtype(f.string("globals_dtype"));
  } catch (const FormatError& e) {
    f.fail("globals_dtype", e.what());
  }
  if (!dtype_is_floating(m.globals_dtype) || m.globals_dtype == DType::F64) f.fail("globals_dtype", "expected F32, BF16 or F16");

  const Fields sites = f.object("sites");
  for (SiteKind kind : kAllSites) {
    const std::string sname = site_name(kind);
    const Fields s = sites.object(sname);
    SiteSpec spec;
    spec.kind = kind;
    const auto [N, K] = site_dims(c, kind);
    spec.N = s.integer("out_features", N, N);
    spec.K = s.integer("in_features", K, K);
    const Fields high = s.object("high");
    const std::string rule = high.string("rule");
    const std::optional<HighRule> parsed = parse_high_rule(rule);
    if (!parsed) high.fail(high.key("rule"), "expected \"last\" or \"per_head\", got \"" + rule + "\"");
    spec.high_rule = *parsed;
    if (spec.high_rule == HighRule::kLast) {
      spec.high_count = high.integer("count", 0, K);
    } else {
      spec.high_group = high.integer("group", 1, K);
      if (K % spec.high_group != 0) high.fail(high.key("group"), "does not divide in_features " + std::to_string(K));
      spec.high_count = high.integer("count", 0, spec.high_group);
    }
    high.no_unknown_keys();
    spec.has_bias = s.boolean("bias");
    const bool bias_expected = site_has_bias(c, kind);
    if (spec.has_bias != bias_expected) s.fail(s.key("bias"), std::string("config.json says ") + (bias_expected ? "true" : "false"));
    const std::string storage = s.string("storage");
    if (storage == "packed") {
      spec.storage = LinearStorage::kPacked;
    } else if (storage == "dense") {
      spec.storage = LinearStorage::kDense;
    } else {
      s.fail(s.key("storage"), "expected \"packed\" or \"dense\", got \"" + storage + "\"");
    }
    const Fields wb = s.object("weight_bits");
    spec.weight_bits_low = static_cast<int>(wb.integer("low", 2, 16));
    spec.weight_bits_high = static_cast<int>(wb.integer("high", 2, 16));
    wb.no_unknown_keys();
    if (spec.storage == LinearStorage::kPacked && (spec.weight_bits_low > kBits4 || spec.weight_bits_high > kBits8)) {
      s.fail(s.key("weight_bits"), "packed storage holds at most 4 (low) and 8 (high) bits");
    }
    if (spec.K4() > kMaxPartDim || spec.K8() > kMaxPartDim) s.fail(s.key("in_features"), "a part exceeds kMaxPartDim = 65536 columns");
    const Fields a = s.object("activations");
    spec.activations.enabled = a.boolean("enabled");
    spec.activations.bits_low = static_cast<int>(a.integer("bits_low", 2, 16));
    spec.activations.bits_high = static_cast<int>(a.integer("bits_high", 2, 16));
    spec.activations.clip_ratio = a.number("clip_ratio", 1e-6, 1.0);
    spec.activations.high_count = a.integer("high_count", 0, spec.high_rule == HighRule::kPerHead ? spec.high_group : K);
    a.no_unknown_keys();
    s.no_unknown_keys();
    m.sites[kind] = spec;
  }
  sites.no_unknown_keys();

  const Fields kv = f.object("kv_cache");
  m.kv.enabled = kv.boolean("enabled");
  m.kv.bits_low = static_cast<int>(kv.integer("bits_low", 2, 16));
  m.kv.bits_high = static_cast<int>(kv.integer("bits_high", 2, 16));
  if (kv.integer("high_count", 0, c.head_dim) != m.r_h) kv.fail(kv.key("high_count"), "must equal r_h");
  m.kv.k_clip_ratio = kv.number("k_clip_ratio", 1e-6, 1.0);
  m.kv.v_clip_ratio = kv.number("v_clip_ratio", 1e-6, 1.0);
  kv.no_unknown_keys();

  const Fields on = f.object("online");
  m.online.qk_rotation = on.boolean("qk_rotation");
  m.online.down_hadamard = on.boolean("down_hadamard");
  if (m.online.down_hadamard) {
    const Fields h = on.object("hadamard");
    m.online.hadamard_n = h.integer("n", c.intermediate_size, c.intermediate_size);
    m.online.hadamard_pow2 = h.integer("pow2", 1, c.intermediate_size);
    m.online.hadamard_block = h.integer("block", 1, c.intermediate_size);
    m.online.hadamard_construction = h.string("construction");
    h.no_unknown_keys();
    const int64_t p = m.online.hadamard_pow2;
    if ((p & (p - 1)) != 0) h.fail(h.key("pow2"), "must be a power of two");
    if (p * m.online.hadamard_block != m.online.hadamard_n) h.fail(h.key("block"), "pow2 x block must equal n");
  }
  on.no_unknown_keys();
  m.recipe = f.at("recipe");
  m.provenance = f.at("provenance");
  if (!m.recipe.is_object()) f.fail("recipe", "expected an object");
  if (!m.provenance.is_object()) f.fail("provenance", "expected an object");
  f.no_unknown_keys();
  return m;
}

// ------------------------------------------------------------------ writer

namespace {
// write(2) until all n bytes are written; IoError naming `path` otherwise.
void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw IoError(path + ": write failed: " + std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

CheckpointWriter::CheckpointWriter(std::string out_dir, int64_t max_shard_bytes)
    : out_dir_(std::move(out_dir)), max_bytes_(max_shard_bytes) {
  if (out_dir_.empty()) throw UsageError("checkpoint: empty output directory name");
  std::error_code ec;
  if (fs::exists(out_dir_, ec)) throw UsageError("--out: '" + out_dir_ + "' already exists; choose a new directory");
  std::string base = out_dir_;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  tmp_dir_ = base + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp_dir_, ec);
  if (!fs::create_directories(tmp_dir_, ec) || ec) {
    throw IoError(tmp_dir_ + ": cannot create the temporary checkpoint directory: " + ec.message());
  }
}

CheckpointWriter::~CheckpointWriter() {
  close_spills();
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(tmp_dir_, ec);
  }
}

void CheckpointWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data, size_t nbytes) {
  if (committed_) throw UsageError("checkpoint: add('" + name + "') after commit");
  if (names_.count(name)) throw UsageError("checkpoint: duplicate tensor '" + name + "'");
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw UsageError("checkpoint: tensor '" + name + "' has a negative dimension");
    numel *= d;
  }
  if (nbytes != dtype_size(dtype) * static_cast<size_t>(numel)) {
    throw UsageError("checkpoint: tensor '" + name + "' " + shape_text(shape) + " " + dtype_name(dtype) + " needs " +
                     std::to_string(dtype_size(dtype) * numel) + " bytes, got " + std::to_string(nbytes));
  }
  if (!pending_.empty() && pending_bytes_ + static_cast<int64_t>(nbytes) > max_bytes_) flush();
  // Spill class by element size: 8 -> 0, 4 -> 1, 2 -> 2, 1 -> 3.
  const size_t es = dtype_size(dtype);
  const int cls = es >= 8 ? 0 : es == 4 ? 1 : es == 2 ? 2 : 3;
  Spill& sp = spill_[cls];
  if (sp.fd < 0) {
    sp.path = (fs::path(tmp_dir_) / ("spill-" + std::to_string(shards_.size()) + "-" + std::to_string(cls))).string();
    sp.fd = ::open(sp.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sp.fd < 0) throw IoError(sp.path + ": cannot create a checkpoint spill file: " + std::strerror(errno));
    sp.bytes = 0;
  }
  write_all(sp.fd, data, nbytes, sp.path);
  pending_.push_back(Pending{name, dtype, shape, cls, sp.bytes, static_cast<int64_t>(nbytes)});
  sp.bytes += static_cast<int64_t>(nbytes);
  pending_bytes_ += static_cast<int64_t>(nbytes);
  names_[name] = true;
}

void CheckpointWriter::add_f32(const std::string& name, const std::vector<int64_t>& shape, const float* data) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  add(name, DType::F32, shape, data, sizeof(float) * static_cast<size_t>(std::max<int64_t>(numel, 0)));
}

void CheckpointWriter::add_packed_linear(const std::string& prefix, const SiteSpec& spec, const int8_t* q, const float* scale_low,
                                         const float* scale_high, const float* bias) {
  const int64_t N = spec.N, K = spec.K, K4 = spec.K4(), K8 = spec.K8();
  if (spec.storage != LinearStorage::kPacked) throw UsageError("checkpoint: " + prefix + " is not a packed site");
  if (!q || !scale_low || !scale_high) throw UsageError("checkpoint: " + prefix + ": null weights or scales");
  const std::vector<int32_t> perm = spec.packed_column_order();
  const int lo4 = bits_min(spec.weight_bits_low), hi4 = bits_max(spec.weight_bits_low);
  const int lo8 = bits_min(spec.weight_bits_high), hi8 = bits_max(spec.weight_bits_high);
  std::vector<int8_t> qp(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) {
      const int v = q[n * K + perm[j]];
      const bool low = j < K4;
      if (v < (low ? lo4 : lo8) || v > (low ? hi4 : hi8)) {
        throw ShapeError("checkpoint: " + prefix + ": q[" + std::to_string(n) + ", " + std::to_string(perm[j]) + "] = " + std::to_string(v) +
                         " is outside the " + std::to_string(low ? spec.weight_bits_low : spec.weight_bits_high) + "-bit range");
      }
      qp[n * K + j] = static_cast<int8_t>(v);
    }
  }
  std::vector<uint8_t> w4(static_cast<size_t>(N * packed4_row_bytes(K4)));
  std::vector<int8_t> w8(static_cast<size_t>(N * K8));
  pack_weights_reference(qp.data(), N, K4, K8, w4.data(), w8.data());
  add(prefix + ".qweight4", DType::U8, {N, packed4_row_bytes(K4)}, w4.data(), w4.size());
  add(prefix + ".qweight8", DType::I8, {N, K8}, w8.data(), w8.size());
  add_f32(prefix + ".scale4", {N}, scale_low);
  add_f32(prefix + ".scale8", {N}, scale_high);
  if (spec.permuted()) add(prefix + ".perm", DType::I32, {K}, perm.data(), perm.size() * sizeof(int32_t));
  if (spec.has_bias) {
    if (!bias) throw UsageError("checkpoint: " + prefix + ": the site has a bias but none was given");
    add_f32(prefix + ".bias", {N}, bias);
  }
}

void CheckpointWriter::add_dense_linear(const std::string& prefix, const SiteSpec& spec, DType dtype, const void* weight,
                                        const float* bias) {
  if (spec.storage != LinearStorage::kDense) throw UsageError("checkpoint: " + prefix + " is not a dense site");
  if (!dtype_is_floating(dtype) || dtype == DType::F64) throw UsageError("checkpoint: " + prefix + ": dense weights must be F32, BF16 or F16");
  add(prefix + ".weight", dtype, {spec.N, spec.K}, weight, dtype_size(dtype) * static_cast<size_t>(spec.N * spec.K));
  if (spec.has_bias) {
    if (!bias) throw UsageError("checkpoint: " + prefix + ": the site has a bias but none was given");
    add_f32(prefix + ".bias", {spec.N}, bias);
  }
}

void CheckpointWriter::close_spills() noexcept {
  for (Spill& sp : spill_) {
    if (sp.fd >= 0) ::close(sp.fd);
    sp.fd = -1;
  }
}

// Assembles shard-<i>.safetensors: 8-byte header length, the JSON header (metadata first, then the
// tensors in data order, padded with spaces to a multiple of 8), then the spill files' bytes in
// decreasing element size (copied by the kernel through a small buffer: no tensor is held in memory).
void CheckpointWriter::flush() {
  if (pending_.empty()) return;
  close_spills();
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = {{"format", "pt"}, {"resq", kCheckpointFormatName}};
  std::vector<std::string> names;
  int64_t base = 0;
  for (int cls = 0; cls < 4; ++cls) {
    for (const Pending& p : pending_) {
      if (p.spill != cls) continue;
      nlohmann::ordered_json entry = nlohmann::ordered_json::object();
      entry["dtype"] = dtype_name(p.dtype);
      entry["shape"] = p.shape;
      entry["data_offsets"] = {base + p.offset, base + p.offset + p.nbytes};
      header[p.name] = std::move(entry);
      names.push_back(p.name);
    }
    base += spill_[cls].bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_text.size()) >> (8 * i));

  const std::string file = "shard-" + std::to_string(shards_.size()) + ".safetensors";
  const std::string path = (fs::path(tmp_dir_) / file).string();
  const int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) throw IoError(path + ": cannot create: " + std::strerror(errno));
  try {
    write_all(out, prefix, sizeof prefix, path);
    write_all(out, header_text.data(), header_text.size(), path);
    std::vector<uint8_t> buf(size_t{8} << 20);
    for (Spill& sp : spill_) {
      if (sp.path.empty()) continue;
      const int in = ::open(sp.path.c_str(), O_RDONLY | O_CLOEXEC);
      if (in < 0) throw IoError(sp.path + ": cannot reopen the checkpoint spill file: " + std::strerror(errno));
      int64_t copied = 0;
      while (copied < sp.bytes) {
        const ssize_t n = ::read(in, buf.data(), static_cast<size_t>(std::min<int64_t>(sp.bytes - copied, buf.size())));
        if (n <= 0) {
          ::close(in);
          throw IoError(sp.path + ": short read while assembling " + path);
        }
        write_all(out, buf.data(), static_cast<size_t>(n), path);
        copied += n;
      }
      ::close(in);
      std::error_code ec;
      fs::remove(sp.path, ec);
      sp = Spill{};
    }
  } catch (...) {
    ::close(out);
    throw;
  }
  if (::close(out) != 0) throw IoError(path + ": close failed: " + std::strerror(errno));
  shards_.emplace_back(file, names);
  pending_.clear();
  pending_bytes_ = 0;
}

std::string CheckpointWriter::commit(const CheckpointMeta& meta, const std::string& config_json_text,
                                     const std::vector<std::string>& extra_files) {
  if (committed_) throw UsageError("checkpoint: commit() called twice");
  flush();
  const fs::path dir(tmp_dir_);
  auto write_text = [&](const std::string& name, const std::string& text) {
    const fs::path p = dir / name;
    std::ofstream out(p, std::ios::binary);
    out << text;
    out.close();
    if (!out) throw IoError(p.string() + ": cannot write");
  };
  if (shards_.size() == 1) {
    fs::rename(dir / shards_[0].first, dir / "model.safetensors");
  } else if (shards_.size() > 1) {
    json weight_map = json::object();
    const size_t n = shards_.size();
    int64_t total = 0;
    for (size_t i = 0; i < n; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, n);
      fs::rename(dir / shards_[i].first, dir / name);
      total += static_cast<int64_t>(fs::file_size(dir / name));
      for (const auto& t : shards_[i].second) weight_map[t] = name;
    }
    write_text("model.safetensors.index.json", json({{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}}).dump(2) + "\n");
  } else {
    throw UsageError("checkpoint: no tensors were added");
  }
  write_text("config.json", config_json_text);
  write_text(kCheckpointConfigFile, meta.to_json().dump(2) + "\n");
  for (const std::string& f : extra_files) {
    std::error_code ec;
    if (!fs::exists(f, ec)) continue;
    fs::copy_file(f, dir / fs::path(f).filename(), fs::copy_options::overwrite_existing, ec);
    if (ec) throw IoError(f + ": cannot copy into the checkpoint: " + ec.message());
  }
  std::error_code ec;
  if (fs::exists(out_dir_, ec)) throw UsageError("--out: '" + out_dir_ + "' already exists");
  fs::rename(tmp_dir_, out_dir_, ec);
  if (ec) throw IoError(out_dir_ + ": cannot rename the finished checkpoint into place: " + ec.message());
  committed_ = true;
  return out_dir_;
}

// ------------------------------------------------------------------ reader

namespace {

const TensorView& expect(const TensorStore& store, const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  if (!store.contains(name)) throw FormatError(store.source() + ": tensor '" + name + "' is missing");
  const TensorView& v = store.get(name);
  if (v.dtype != dtype) {
    throw FormatError(v.file + ": tensor '" + name + "' has dtype " + dtype_name(v.dtype) + ", expected " + dtype_name(dtype));
  }
  if (v.shape != shape) {
    throw ShapeError(v.file + ": tensor '" + name + "' has shape " + shape_text(v.shape) + ", expected " + shape_text(shape));
  }
  return v;
}

const TensorView& expect_floating(const TensorStore& store, const std::string& name, const std::vector<int64_t>& shape) {
  if (!store.contains(name)) throw FormatError(store.source() + ": tensor '" + name + "' is missing");
  const TensorView& v = store.get(name);
  if (!dtype_is_floating(v.dtype)) throw FormatError(v.file + ": tensor '" + name + "' has dtype " + dtype_name(v.dtype) + ", expected a float dtype");
  if (v.shape != shape) {
    throw ShapeError(v.file + ": tensor '" + name + "' has shape " + shape_text(v.shape) + ", expected " + shape_text(shape));
  }
  return v;
}

void check_finite(const TensorView& v, bool positive) {
  const std::vector<float> x = tensor_to_float32_vector(v);
  for (size_t i = 0; i < x.size(); ++i) {
    if (!std::isfinite(x[i]) || (positive && !(x[i] > 0.0f))) {
      throw FormatError(v.file + ": tensor '" + v.name + "' element " + std::to_string(i) + " = " + std::to_string(x[i]) +
                        (positive ? " is not a finite positive scale" : " is not finite"));
    }
  }
}

template <typename T>
std::vector<T> copy_raw(const TensorView& v) {
  std::vector<T> out(v.nbytes / sizeof(T));
  if (v.nbytes) std::memcpy(out.data(), v.data, v.nbytes);
  return out;
}

}  // namespace

bool PackedCheckpoint::is_checkpoint_dir(const std::string& dir) {
  std::error_code ec;
  return fs::exists(fs::path(dir) / kCheckpointConfigFile, ec);
}

PackedCheckpoint PackedCheckpoint::open(const std::string& dir) {
  PackedCheckpoint ck;
  ck.dir_ = dir;
  const std::string meta_path = (fs::path(dir) / kCheckpointConfigFile).string();
  if (!fs::exists(meta_path)) throw IoError(dir + ": not a resq packed checkpoint (no " + kCheckpointConfigFile + ")");
  const ModelConfig model = load_model_config((fs::path(dir) / "config.json").string());
  json j;
  try {
    j = json::parse(read_file_text(meta_path));
  } catch (const json::exception& e) {
    throw FormatError(meta_path + ": invalid JSON: " + e.what());
  }
  ck.meta_ = CheckpointMeta::from_json(j, model, meta_path);
  ck.store_ = std::make_shared<TensorStore>(TensorStore::open_model_dir(dir));
  const TensorStore& st = *ck.store_;
  const CheckpointMeta& m = ck.meta_;
  const ModelConfig& c = m.model;
  CheckpointSizes& sz = ck.sizes_;
  sz.parameters = c.parameter_count() + (c.tie_word_embeddings ? c.vocab_size * c.hidden_size : 0);
  std::set<std::string> expected;
  auto note = [&](const TensorView& v) {
    expected.insert(v.name);
    return static_cast<int64_t>(v.nbytes);
  };
  // Globals.
  sz.global_bytes += note(expect_floating(st, "model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  sz.global_bytes += note(expect_floating(st, "lm_head.weight", {c.vocab_size, c.hidden_size}));
  sz.global_bytes += note(expect_floating(st, "model.norm.weight", {c.hidden_size}));
  check_finite(st.get("model.norm.weight"), false);
  if (m.online.down_hadamard) {
    const TensorView& signs = expect(st, "resq.down_hadamard.signs", DType::F32, {m.online.hadamard_n});
    const auto s = tensor_to_float32_vector(signs);
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != 1.0f && s[i] != -1.0f) throw FormatError(signs.file + ": tensor 'resq.down_hadamard.signs' element " + std::to_string(i) + " is not +1 or -1");
    }
    sz.global_bytes += note(signs);
    const TensorView& block = expect(st, "resq.down_hadamard.block", DType::F64, {m.online.hadamard_block, m.online.hadamard_block});
    check_finite(block, false);
    sz.global_bytes += note(block);
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* norm : {"input_layernorm.weight", "post_attention_layernorm.weight"}) {
      const TensorView& v = expect_floating(st, p + norm, {c.hidden_size});
      check_finite(v, false);
      sz.global_bytes += note(v);
    }
    if (m.online.qk_rotation) {
      const TensorView& v = expect(st, "resq.layers." + std::to_string(l) + ".qk_rotation", DType::F32, {c.head_dim, c.head_dim});
      check_finite(v, false);
      sz.global_bytes += note(v);
    }
    for (const auto& [kind, s] : m.sites) {
      const std::string pre = site_prefix(l, kind);
      if (s.has_bias) {
        const TensorView& b = expect(st, pre + ".bias", DType::F32, {s.N});
        check_finite(b, false);
        sz.global_bytes += note(b);
      }
      if (s.storage == LinearStorage::kDense) {
        const TensorView& w = expect_floating(st, pre + ".weight", {s.N, s.K});
        if (w.dtype == DType::F64) throw FormatError(w.file + ": tensor '" + w.name + "' must be F32, BF16 or F16");
        sz.dense_linear_weights += s.N * s.K;
        sz.dense_linear_bytes += note(w);
        continue;
      }
      const int64_t K4 = s.K4(), K8 = s.K8(), rb = packed4_row_bytes(K4);
      const TensorView& w4 = expect(st, pre + ".qweight4", DType::U8, {s.N, rb});
      const TensorView& w8 = expect(st, pre + ".qweight8", DType::I8, {s.N, K8});
      const TensorView& s4 = expect(st, pre + ".scale4", DType::F32, {s.N});
      const TensorView& s8 = expect(st, pre + ".scale8", DType::F32, {s.N});
      check_finite(s4, true);
      check_finite(s8, true);
      // Integer ranges: the bit widths of resq_config.json bound every stored value, and the pad
      // nibble of an odd K4 is 0 (FORMAT.md 1.3) — a flipped bit in the data shows up here.
      const int lo4 = bits_min(s.weight_bits_low), hi4 = bits_max(s.weight_bits_low);
      const int lo8 = bits_min(s.weight_bits_high), hi8 = bits_max(s.weight_bits_high);
      for (int64_t n = 0; n < s.N; ++n) {
        const uint8_t* row = w4.data + n * rb;
        for (int64_t k = 0; k < K4; ++k) {
          const int v = int4_get(row, k);
          if (v < lo4 || v > hi4) {
            throw FormatError(w4.file + ": tensor '" + w4.name + "' [" + std::to_string(n) + ", " + std::to_string(k) + "] = " +
                              std::to_string(v) + " is outside the " + std::to_string(s.weight_bits_low) + "-bit range");
          }
        }
        if ((K4 & 1) && (row[rb - 1] >> 4) != 0) {
          throw FormatError(w4.file + ": tensor '" + w4.name + "' row " + std::to_string(n) + ": the pad nibble of odd K4 = " +
                            std::to_string(K4) + " is not 0");
        }
        const int8_t* row8 = reinterpret_cast<const int8_t*>(w8.data) + n * K8;
        for (int64_t k = 0; k < K8; ++k) {
          if (row8[k] < lo8 || row8[k] > hi8) {
            throw FormatError(w8.file + ": tensor '" + w8.name + "' [" + std::to_string(n) + ", " + std::to_string(k) + "] = " +
                              std::to_string(row8[k]) + " is outside the " + std::to_string(s.weight_bits_high) + "-bit range");
          }
        }
      }
      sz.quantized_weights += s.N * s.K;
      sz.packed_weight_bytes += note(w4) + note(w8);
      sz.packed_scale_bytes += note(s4) + note(s8);
      if (s.permuted()) {
        const TensorView& pv = expect(st, pre + ".perm", DType::I32, {s.K});
        const auto perm = copy_raw<int32_t>(pv);
        if (perm != s.packed_column_order()) {
          throw FormatError(pv.file + ": tensor '" + pv.name + "' is not the column order of resq_config.json's high rule (low columns "
                            "ascending, then high columns ascending)");
        }
        sz.packed_scale_bytes += note(pv);
      } else if (st.contains(pre + ".perm")) {
        throw FormatError(st.get(pre + ".perm").file + ": tensor '" + pre + ".perm' present but the site is not permuted");
      }
    }
  }
  for (const std::string& name : st.names()) {
    if (!expected.count(name)) throw FormatError(st.get(name).file + ": unexpected tensor '" + name + "' (not part of format version 1)");
  }
  for (const auto& f : st.files()) {
    sz.file_bytes += static_cast<int64_t>(f->file_size());
    f->release_pages();  // validation touched every page; a 1B checkpoint would otherwise stay resident
  }
  return ck;
}

LinearData PackedCheckpoint::linear(int64_t layer, SiteKind kind) const {
  const ModelConfig& c = meta_.model;
  if (layer < 0 || layer >= c.num_layers) throw ShapeError(dir_ + ": layer " + std::to_string(layer) + " out of range");
  LinearData d;
  d.spec = meta_.sites.at(kind);
  const SiteSpec& s = d.spec;
  const std::string pre = site_prefix(layer, kind);
  if (s.has_bias) d.bias = tensor_to_float32_vector(store_->get(pre + ".bias"));
  d.perm = s.packed_column_order();
  if (s.storage == LinearStorage::kDense) {
    d.dense_weight = tensor_to_float32_vector(store_->get(pre + ".weight"));
    return d;
  }
  d.dims = {s.N, s.K4(), s.K8()};
  d.w4 = copy_raw<uint8_t>(store_->get(pre + ".qweight4"));
  d.w8 = copy_raw<int8_t>(store_->get(pre + ".qweight8"));
  d.scale4 = tensor_to_float32_vector(store_->get(pre + ".scale4"));
  d.scale8 = tensor_to_float32_vector(store_->get(pre + ".scale8"));
  return d;
}

std::vector<int8_t> LinearData::unpacked_original_order() const {
  if (spec.storage != LinearStorage::kPacked) throw UsageError("LinearData: " + std::string(site_name(spec.kind)) + " is not packed");
  const int64_t N = dims.N, K = dims.K();
  std::vector<int8_t> qp(static_cast<size_t>(N * K));
  unpack_weights_reference(w4.data(), w8.data(), N, dims.K4, dims.K8, qp.data());
  std::vector<int8_t> q(qp.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K; ++j) q[n * K + perm[j]] = qp[n * K + j];
  return q;
}

std::vector<float> LinearData::dequantized() const {
  if (spec.storage == LinearStorage::kDense) return dense_weight;
  const int64_t N = dims.N, K = dims.K(), K4 = dims.K4;
  std::vector<int8_t> qp(static_cast<size_t>(N * K));
  unpack_weights_reference(w4.data(), w8.data(), N, K4, dims.K8, qp.data());
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) {
      const float scale = j < K4 ? scale4[n] : scale8[n];
      w[n * K + perm[j]] = mul_rn(scale, static_cast<float>(qp[n * K + j]));
    }
  }
  return w;
}

std::vector<float> PackedCheckpoint::float_tensor(const std::string& name) const {
  return tensor_to_float32_vector(store_->get(name));
}

std::vector<double> PackedCheckpoint::double_tensor(const std::string& name) const {
  const TensorView& v = store_->get(name);
  std::vector<double> out(static_cast<size_t>(v.numel()));
  tensor_to_float64(v, out.data());
  return out;
}

}  // namespace resq::format
