// `resq inspect DIR`: what a packed checkpoint holds — sites, bits, splits, sizes, compression vs bf16,
// recipe and provenance — after validating it completely (the same reader `resq eval` uses).
#include <cstdio>
#include <memory>

#include "common.h"
#include "resq/common/error.h"
#include "resq/format/checkpoint.h"

namespace resq::tools {
namespace {

struct InspectOptions {
  CommonOptions common;
  std::string dir;
};

std::string bits_text(bool enabled, int low, int high, int64_t high_count) {
  if (!enabled) return "fp";
  return high_count > 0 ? std::to_string(low) + "/" + std::to_string(high) : std::to_string(low);
}

void run_inspect(const InspectOptions& o) {
  apply_runtime_options(o.common);
  const format::PackedCheckpoint ck = format::PackedCheckpoint::open(o.dir);
  const int64_t verified = ck.verify_checksums();  // every tensor's bytes against resq_config.json
  const format::CheckpointMeta& m = ck.meta();
  const ModelConfig& c = m.model;
  const format::CheckpointSizes sz = ck.sizes();
  std::printf("%s: %s format version %d.%d (kernel layout %d), %zu safetensors file(s)\n", o.dir.c_str(),
              format::kCheckpointFormatName, m.format_version, m.format_minor_version, m.kernel_layout_version,
              ck.store().files().size());
  if (verified > 0) {
    std::printf("integrity: %lld tensors match their %s checksums\n", static_cast<long long>(verified), format::kChecksumAlgorithm);
  } else {
    std::printf("integrity: not verifiable (format %d.0 stores no checksums)\n", m.format_version);
  }
  std::printf("model: %s, %lld layers, hidden %lld, %lld heads / %lld kv heads (head_dim %lld), ffn %lld, vocab %lld, "
              "%.2f M parameters\n",
              c.model_type.c_str(), static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
              static_cast<long long>(c.num_heads), static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim),
              static_cast<long long>(c.intermediate_size), static_cast<long long>(c.vocab_size), sz.parameters / 1e6);
  std::printf("recipe: %s — %s\n", m.recipe.value("name", std::string("?")).c_str(),
              m.recipe.value("description", std::string("")).c_str());
  std::printf("subspaces: r = %lld of %lld (hidden), r_h = %lld of %lld (head)\n", static_cast<long long>(m.r),
              static_cast<long long>(c.hidden_size), static_cast<long long>(m.r_h), static_cast<long long>(c.head_dim));
  std::printf("%-10s %6s %6s %6s %6s | %-7s | %-8s | %-8s | %s\n", "site", "N", "K", "K4", "K8", "storage", "weights", "acts",
              "high columns");
  for (const auto& [kind, s] : m.sites) {
    const bool packed = s.storage == format::LinearStorage::kPacked;
    std::printf("%-10s %6lld %6lld %6lld %6lld | %-7s | %-8s | %-8s | %s\n", format::site_name(kind), static_cast<long long>(s.N),
                static_cast<long long>(s.K), static_cast<long long>(s.K4()), static_cast<long long>(s.K8()),
                packed ? "packed" : "dense",
                bits_text(s.weight_bits_low < 16, s.weight_bits_low, s.weight_bits_high, s.high_count).c_str(),
                bits_text(s.activations.enabled, s.activations.bits_low, s.activations.bits_high, s.activations.high_count).c_str(),
                format::describe_high_columns(s).c_str());
  }
  std::printf("kv cache: %s%s\n", bits_text(m.kv.enabled, m.kv.bits_low, m.kv.bits_high, m.r_h).c_str(),
              m.kv.enabled ? (" (last r_h = " + std::to_string(m.r_h) + " channels of each head high; clip K " + std::to_string(m.kv.k_clip_ratio) + ", V " +
                              std::to_string(m.kv.v_clip_ratio) + ")").c_str()
                           : "");
  std::printf("online: U_C on q/k %s; U_D before down_proj %s\n",
              m.online.qk_rotation ? (format::qk_rotation_shape(m).size() == 3 ? "per KV head" : "per layer") : "no",
              m.online.down_hadamard ? (std::to_string(m.online.hadamard_n) + " = " + m.online.hadamard_construction).c_str() : "no");
  std::printf("globals: embeddings and lm_head in %s\n", dtype_name(m.globals_dtype).c_str());
  std::printf("size: %.2f MiB on disk (bf16 model: %.2f MiB, %.2fx smaller)\n", sz.file_bytes / 1048576.0,
              2.0 * sz.parameters / 1048576.0, sz.compression_vs_bf16());
  if (sz.quantized_weights > 0) {
    std::printf("packed linears: %lld weights in %.2f MiB of integers + %.2f MiB of scales = %.4f bits/weight\n",
                static_cast<long long>(sz.quantized_weights), sz.packed_weight_bytes / 1048576.0, sz.packed_scale_bytes / 1048576.0,
                sz.bits_per_quantized_weight());
  }
  if (sz.dense_linear_weights > 0) {
    std::printf("dense linears: %lld weights in %.2f MiB\n", static_cast<long long>(sz.dense_linear_weights), sz.dense_linear_bytes / 1048576.0);
  }
  std::printf("other tensors (embeddings, lm_head, norms, biases, rotations): %.2f MiB\n", sz.global_bytes / 1048576.0);
  std::printf("provenance: %s\n", m.provenance.dump().c_str());
  if (!o.common.json_out.empty()) {
    nlohmann::json j = m.to_json();
    j["dir"] = o.dir;
    j["verified_tensors"] = verified;
    j["sizes"] = sz.to_json();
    write_json_file(o.common.json_out, j);
  }
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "validate a packed checkpoint and show its layers, bits, sizes and provenance");
  cmd->add_option("dir", o->dir, "packed checkpoint directory (written by resq quantize)")->required();
  cmd->add_option("--log-level", o->common.log_level, "log level")->capture_default_str();
  add_json_option(cmd, o->common);
  cmd->footer("Example:\n  resq inspect llama-resq --json inspect.json");
  cmd->callback([o] { run_inspect(*o); });
}

}  // namespace resq::tools
