// The validating reader of a packed checkpoint (PackedCheckpoint::open, docs/FORMAT.md 2.5) and the
// copies it hands out (LinearData).
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "checkpoint_checksums.h"
#include "resq/common/error.h"
#include "resq/common/file.h"
#include "resq/common/log.h"
#include "resq/common/json_fields.h"
#include "resq/format/checkpoint.h"
#include "resq/io/tensor_checks.h"

namespace resq::format {
namespace fs = std::filesystem;
using nlohmann::json;

// ------------------------------------------------------------------ reader

namespace {

const TensorView& expect(const TensorStore& store, const std::string& name, DType dtype, const std::vector<int64_t>& shape) {
  if (!store.contains(name)) throw FormatError(store.source() + ": tensor '" + name + "' is missing");
  const TensorView& v = store.get(name);
  if (v.dtype != dtype) {
    throw FormatError(v.file + ": tensor '" + name + "' has dtype " + dtype_name(v.dtype) + ", expected " + dtype_name(dtype));
  }
  if (v.shape != shape) {
    throw ShapeError(v.file + ": tensor '" + name + "' has shape " + format_shape(v.shape) + ", expected " + format_shape(shape));
  }
  return v;
}

const TensorView& expect_floating(const TensorStore& store, const std::string& name, const std::vector<int64_t>& shape) {
  if (!store.contains(name)) throw FormatError(store.source() + ": tensor '" + name + "' is missing");
  const TensorView& v = store.get(name);
  if (!dtype_is_floating(v.dtype)) throw FormatError(v.file + ": tensor '" + name + "' has dtype " + dtype_name(v.dtype) + ", expected a float dtype");
  if (v.shape != shape) {
    throw ShapeError(v.file + ": tensor '" + name + "' has shape " + format_shape(v.shape) + ", expected " + format_shape(shape));
  }
  return v;
}

constexpr const char* kFiniteWhy = "every float tensor of a packed checkpoint must be finite";

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

namespace {

// Checks every tensor of a checkpoint against its metadata (FORMAT.md 2.3 and 2.5) and adds up the
// sizes; every tensor it accepts is noted, so that finish() can reject the ones nobody expects.
class TensorValidator {
 public:
  TensorValidator(const TensorStore& store, const CheckpointMeta& meta, CheckpointSizes& sizes)
      : st_(store), m_(meta), sz_(sizes) {}

  void globals() {
    const ModelConfig& c = m_.model;
    for (const char* name : {kEmbedTokensTensor, kLmHeadTensor}) {
      const TensorView& v = expect_floating(st_, name, {c.vocab_size, c.hidden_size});
      require_finite(v, kFiniteWhy);
      sz_.global_bytes += note(v);
    }
    sz_.global_bytes += note(expect_floating(st_, kFinalNormTensor, {c.hidden_size}));
    check_finite(st_.get(kFinalNormTensor), false);
    if (!m_.online.down_hadamard) return;
    const TensorView& signs = expect(st_, kDownHadamardSignsTensor, DType::F32, {m_.online.hadamard_n});
    const auto s = tensor_to_float32_vector(signs);
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != 1.0f && s[i] != -1.0f) {
        throw FormatError(signs.file + ": tensor '" + kDownHadamardSignsTensor + "' element " + std::to_string(i) + " is not +1 or -1");
      }
    }
    sz_.global_bytes += note(signs);
    const TensorView& block = expect(st_, kDownHadamardBlockTensor, DType::F64, {m_.online.hadamard_block, m_.online.hadamard_block});
    check_finite(block, false);
    sz_.global_bytes += note(block);
  }

  void layer(int64_t l) {
    const ModelConfig& c = m_.model;
    for (const std::string& norm : {input_norm_tensor(l), post_attention_norm_tensor(l)}) {
      const TensorView& v = expect_floating(st_, norm, {c.hidden_size});
      check_finite(v, false);
      sz_.global_bytes += note(v);
    }
    if (m_.online.qk_rotation) {
      const TensorView& v = expect(st_, qk_rotation_tensor(l), DType::F32, qk_rotation_shape(m_));
      check_finite(v, false);
      sz_.global_bytes += note(v);
    }
    for (const auto& [kind, s] : m_.sites) site(site_tensor_names(l, kind), s);
  }

  // Every tensor of the store was noted (no tensor outside format version 1).
  void finish() const {
    for (const std::string& name : st_.names()) {
      if (!expected_.count(name)) throw FormatError(st_.get(name).file + ": unexpected tensor '" + name + "' (not part of format version 1)");
    }
  }

 private:
  int64_t note(const TensorView& v) {
    expected_.insert(v.name);
    return static_cast<int64_t>(v.nbytes);
  }

  void site(const SiteTensorNames& t, const SiteSpec& s) {
    if (s.has_bias) {
      const TensorView& b = expect(st_, t.bias, DType::F32, {s.N});
      check_finite(b, false);
      sz_.global_bytes += note(b);
    }
    if (s.storage == LinearStorage::kDense) {
      const TensorView& w = expect_floating(st_, t.weight, {s.N, s.K});
      if (w.dtype == DType::F64) throw FormatError(w.file + ": tensor '" + w.name + "' must be F32, BF16 or F16");
      require_finite(w, kFiniteWhy);
      sz_.dense_linear_weights += s.N * s.K;
      sz_.dense_linear_bytes += note(w);
      return;
    }
    const TensorView& w4 = expect(st_, t.qweight4, DType::U8, {s.N, packed4_row_bytes(s.K4())});
    const TensorView& w8 = expect(st_, t.qweight8, DType::I8, {s.N, s.K8()});
    const TensorView& s4 = expect(st_, t.scale4, DType::F32, {s.N});
    const TensorView& s8 = expect(st_, t.scale8, DType::F32, {s.N});
    check_finite(s4, true);
    check_finite(s8, true);
    check_codes(s, w4, w8);
    sz_.quantized_weights += s.N * s.K;
    sz_.packed_weight_bytes += note(w4) + note(w8);
    sz_.packed_scale_bytes += note(s4) + note(s8);
    if (s.permuted()) {
      const TensorView& pv = expect(st_, t.perm, DType::I32, {s.K});
      if (copy_raw<int32_t>(pv) != s.packed_column_order()) {
        throw FormatError(pv.file + ": tensor '" + pv.name + "' is not the column order of resq_config.json's high rule (low columns "
                          "ascending, then high columns ascending)");
      }
      sz_.packed_scale_bytes += note(pv);
    } else if (st_.contains(t.perm)) {
      throw FormatError(st_.get(t.perm).file + ": tensor '" + t.perm + "' present but the site is not permuted");
    }
  }

  // Integer ranges: the bit widths of resq_config.json bound every stored value, and the pad nibble
  // of an odd K4 is 0 (FORMAT.md 1.3) — a flipped bit in the data shows up here.
  static void check_codes(const SiteSpec& s, const TensorView& w4, const TensorView& w8) {
    const int64_t K4 = s.K4(), K8 = s.K8(), rb = packed4_row_bytes(K4);
    const int lo4 = weight_code_min(s.weight_bits_low), hi4 = weight_code_max(s.weight_bits_low);
    const int lo8 = weight_code_min(s.weight_bits_high), hi8 = weight_code_max(s.weight_bits_high);
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
  }

  const TensorStore& st_;
  const CheckpointMeta& m_;
  CheckpointSizes& sz_;
  std::set<std::string> expected_;
};

// resq_config.json of `dir`, parsed against its config.json.
CheckpointMeta read_meta(const std::string& dir) {
  const std::string meta_path = (fs::path(dir) / kCheckpointConfigFile).string();
  std::error_code ec;
  if (!fs::exists(meta_path, ec)) throw IoError(dir + ": not a resq packed checkpoint (no " + kCheckpointConfigFile + ")");
  const ModelConfig model = load_model_config((fs::path(dir) / "config.json").string());
  const json j = parse_json(read_file(meta_path, "checkpoint metadata"), meta_path, JsonErrorKind::kFormat);
  return CheckpointMeta::from_json(j, model, meta_path);
}

}  // namespace

PackedCheckpoint PackedCheckpoint::open(const std::string& dir) {
  PackedCheckpoint ck;
  ck.dir_ = dir;
  ck.meta_ = read_meta(dir);
  ck.store_ = std::make_shared<TensorStore>(TensorStore::open_model_dir(dir));
  const ModelConfig& c = ck.meta_.model;
  ck.sizes_.parameters = c.parameter_count() + (c.tie_word_embeddings ? c.vocab_size * c.hidden_size : 0);
  TensorValidator v(*ck.store_, ck.meta_, ck.sizes_);
  v.globals();
  for (int64_t l = 0; l < c.num_layers; ++l) v.layer(l);
  v.finish();
  if (ck.meta_.format_minor_version >= 1) {
    check_checksum_names(*ck.store_, ck.meta_.checksums, (fs::path(dir) / kCheckpointConfigFile).string());
  } else {
    log::warn(dir + ": checkpoint format 1.0 has no checksums: its integrity cannot be verified (re-quantize to get them)");
  }
  for (const auto& f : ck.store_->files()) {
    ck.sizes_.file_bytes += static_cast<int64_t>(f->file_size());
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
  const SiteTensorNames t = site_tensor_names(layer, kind);
  std::vector<float> bias = s.has_bias ? tensor_to_float32_vector(store_->get(t.bias)) : std::vector<float>{};
  d.perm = s.packed_column_order();
  if (s.storage == LinearStorage::kDense) {
    d.dense_weight = tensor_to_float32_vector(store_->get(t.weight));
    d.dense_bias = std::move(bias);
    return d;
  }
  // Rows validated by open() (codes in range, pad nibble 0); the row sums are computed here, once.
  d.packed = packed_linear_from_rows({s.N, s.K4(), s.K8()}, copy_raw<uint8_t>(store_->get(t.qweight4)),
                                     copy_raw<int8_t>(store_->get(t.qweight8)), tensor_to_float32_vector(store_->get(t.scale4)),
                                     tensor_to_float32_vector(store_->get(t.scale8)), std::move(bias));
  return d;
}

std::vector<int8_t> LinearData::unpacked_original_order() const {
  if (spec.storage != LinearStorage::kPacked) throw UsageError("LinearData: " + std::string(site_name(spec.kind)) + " is not packed");
  const int64_t N = packed.dims.N, K = packed.dims.K();
  const std::vector<int8_t> qp = unpack_linear(packed.view());
  std::vector<int8_t> q(qp.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K; ++j) q[n * K + perm[j]] = qp[n * K + j];
  return q;
}

std::vector<float> LinearData::dequantized() const {
  if (spec.storage == LinearStorage::kDense) return dense_weight;
  const int64_t N = packed.dims.N, K = packed.dims.K(), K4 = packed.dims.K4;
  const std::vector<int8_t> qp = unpack_linear(packed.view());
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) {
      const float scale = j < K4 ? packed.sw4[n] : packed.sw8[n];
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
