// `resq export`: a packed checkpoint as a plain HF directory (dequantized weights, rotations folded
// where exact for weight-only use; include/resq/export/hf_export.h says which).
#include <cstdio>
#include <memory>

#include "common.h"
#include "resq/common/file.h"
#include "resq/common/interrupt.h"
#include "resq/common/log.h"
#include "resq/export/hf_export.h"

namespace resq::tools {
namespace {

struct ExportCliOptions {
  std::string checkpoint;
  std::string out;
  std::string format;
  std::string log_level = "info";
};

void run_export(const ExportCliOptions& o) {
  log::set_level(o.log_level);
  check_output_dir_creatable(o.out, "--out");
  install_interrupt_handlers();  // Ctrl-C: the staging directory is removed at the next tensor
  HfExportOptions e;
  e.checkpoint_dir = o.checkpoint;
  e.out_dir = o.out;
  e.format = o.format;
  const HfExportReport r = export_hf(e);
  std::printf("wrote %s: plain HF directory, %lld tensors in %s\n", r.out_dir.c_str(), static_cast<long long>(r.tensors),
              r.dtype.c_str());
  for (const auto& f : r.folded) std::printf("folded: %s\n", f.c_str());
  for (const auto& f : r.dropped) std::printf("dropped (cancels exactly): %s\n", f.c_str());
  for (const auto& f : r.not_preserved) std::printf("NOT preserved: %s\n", f.c_str());
  std::printf("preserved: the quantized weights (what `resq eval --mode simulate --weights-only` runs)\n");
  if (!r.copied_files.empty()) {
    std::string files;
    for (const auto& f : r.copied_files) files += (files.empty() ? "" : ", ") + f;
    std::printf("copied: %s\n", files.c_str());
  }
}

}  // namespace

void register_export(CLI::App& app) {
  auto o = std::make_shared<ExportCliOptions>();
  auto* cmd = app.add_subcommand("export", "write a packed checkpoint as a plain HF directory of its dequantized weights");
  cmd->add_option("checkpoint", o->checkpoint, "resq packed checkpoint directory")->required();
  cmd->add_option("--out", o->out, "output directory (must not exist)")->required();
  cmd->add_option("--format", o->format, "output format: " + hf_export_formats())->required();
  cmd->add_option("--log-level", o->log_level, "log level")->capture_default_str();
  cmd->footer("Example:\n  resq export --format hf-bf16 llama-resq --out llama-resq-hf\n"
              "  (weight quantization is preserved; activation and KV-cache quantization are not)");
  cmd->callback([o] { run_export(*o); });
}

}  // namespace resq::tools
