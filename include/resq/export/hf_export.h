// `resq export --format hf-bf16`: a packed checkpoint as a plain HuggingFace model directory (the
// original architecture's config.json, safetensors weights, tokenizer files) whose linears are the
// dequantized quantized weights, so transformers, vLLM or llama.cpp's converter run the
// weight-quantized model. Torch-free.
//
// What is exact for weight-only use, and so folded:
//   * U_A, U_B and the RMSNorm weights are already fused into the stored weights (norms are 1,
//     and RMSNorm with unit weights commutes with an orthogonal rotation of the residual stream).
//   * U_D, the online Hadamard T before down_proj: the runtime computes (x T) W'^T with W' the
//     stored (rotated, quantized) weights; x (W' T^T)^T is the same product, so down_proj is exported
//     as dequant(W') T^T (float64, then rounded to the output dtype).
//   * U_C, the rotation of q and k after RoPE: (q U)(k U)^T = q k^T for orthogonal U, so without KV
//     quantization it changes nothing and is dropped (refused when the stored U_C is not orthogonal).
// Not preserved: activation quantization and KV-cache quantization (the exported model runs them in
// its own floating point); the weights are exactly those the checkpoint simulates, up to the output
// dtype's rounding.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace resq {

struct HfExportOptions {
  std::string checkpoint_dir;
  std::string out_dir;           // must not exist (written under a temporary name, renamed)
  std::string format = "hf-bf16";  // hf-bf16 | hf-f32
};

struct HfExportReport {
  std::string out_dir;
  std::string dtype;                       // "bfloat16" | "float32"
  int64_t tensors = 0;
  std::vector<std::string> folded;         // what was folded into the weights, one line each
  std::vector<std::string> dropped;        // online transforms dropped because they cancel exactly
  std::vector<std::string> not_preserved;  // what the exported model does not reproduce
  std::vector<std::string> copied_files;   // tokenizer/generation files copied
};

// The formats export_hf writes ("hf-bf16, hf-f32").
std::string hf_export_formats();

// Throws UsageError (unknown format, out_dir exists), FormatError/IoError (bad checkpoint),
// UnsupportedError (a transform that cannot be folded exactly, naming it).
HfExportReport export_hf(const HfExportOptions& options);

}  // namespace resq
