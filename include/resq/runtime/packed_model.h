// Runs a resq packed checkpoint: the CPU integer runtime (packed linears on the integer kernels,
// activation quantization fused with the online Hadamard, quantized KV cache) or the simulated
// (fake-quant) path from the same checkpoint, and the loader every tool uses for any model dir.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cpu/quantize.h"
#include "resq/format/checkpoint.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/linear.h"

namespace resq {

// packed: integer kernels (the default for a packed checkpoint); simulate: dequantized weights and
// fake-quantized activations / KV cache (the arithmetic of the paper and of `resq quantize`);
// simulate-weights: dequantized weights only, activations and KV cache in floating point (what a
// weight-only export runs, `resq eval --mode simulate --weights-only`).
enum class ExecutionMode { kPacked, kSimulate, kSimulateWeights };
// "packed" | "simulate" (simulate-weights is chosen by a flag); throws UsageError naming --mode otherwise.
ExecutionMode parse_execution_mode(const std::string& name);
const char* execution_mode_name(ExecutionMode mode);

// A packed linear on the CPU integer kernels:
//   x [..., K] (any float dtype) -> gather columns by perm (o_proj) -> online Hadamard (down_proj,
//   optional) -> per-token asymmetric quantization (4-bit part + 8-bit part, kernels/cpu) ->
//   W4A4 + W8A8 integer GEMM with the fp32 epilogue (+ bias) -> y [..., N] in x's dtype.
// The gather, the Hadamard and the quantization run per block of tokens in one pass over a
// thread-local buffer; the GEMM then runs over all tokens.
class PackedCpuLinear : public Linear {
 public:
  // packed: N x (K4 + K8) packed weights with row sums, compact rows (as packed or read); perm: [K] packed column j = input column
  // perm[j], or empty for the identity; clip: activation clip ratio of both parts;
  // input_hadamard: applied to every token before quantization, or null.
  PackedCpuLinear(format::PackedLinear packed, std::vector<int32_t> perm, float clip,
                  std::shared_ptr<const OnlineHadamard> input_hadamard);
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return packed_.dims.K(); }
  int64_t out_features() const override { return packed_.dims.N; }
  std::string implementation() const override { return "packed-cpu"; }
  const format::PackedLinear& packed() const { return packed_; }

  // The quantization step alone: x [M, K] float32 contiguous -> quantized rows (for tests).
  cpu::QuantizedActivations quantize_input(const float* x, int64_t M) const;

 private:
  format::PackedLinear packed_;
  std::vector<int32_t> perm_;
  float clip_;
  std::shared_ptr<const OnlineHadamard> hadamard_;
};

// The quantized KV cache of the integer runtime: K or V [B, Hkv, T, hd] is stored as packed rows
// (one row per (b, h, t): the first hd - r_h channels 4-bit, the last r_h 8-bit, per-row
// asymmetric scale/zero, exactly the activation layout of format/packed.h) and read back
// dequantized (x̂ = s * (q - z)) by attention. Bit-identical to KvFakeQuant.
class PackedKvCacheQuant : public TensorTransform {
 public:
  PackedKvCacheQuant(int64_t head_dim, int64_t r_h, float clip);
  at::Tensor apply(const at::Tensor& x) const override;
  // Packs x [rows, head_dim] float32 (the cache write) / unpacks into out [rows, head_dim].
  cpu::QuantizedActivations pack(const float* x, int64_t rows) const;
  void unpack(const cpu::QuantizedActivations& q, float* out) const;
  int64_t head_dim() const { return head_dim_; }
  int64_t r_h() const { return r_h_; }  // the last r_h channels of a row are 8-bit
  float clip() const { return clip_; }

 private:
  int64_t head_dim_;
  int64_t r_h_;
  float clip_;
};

// One site as load_packed_model builds it from a checkpoint's LinearData (also used by the layer
// benchmark, src/bench/layer_bench.cpp): kPacked with activations enabled -> backend.h's
// make_packed_linear: PackedCpuLinear, or PackedCudaLinear on a cuda device (with `fused_hadamard`
// fused into its quantizer, *fused = true);
// otherwise a DenseLinear of the dequantized weights [N, K] (wrapped in SimulatedLinear when the
// activations are fake-quantized). Tensors go to `device` in `dtype`. No checks beyond the linears'.
std::shared_ptr<Linear> build_site_linear(format::LinearData data, ExecutionMode mode, at::ScalarType dtype,
                                          at::Device device, const std::shared_ptr<const OnlineHadamard>& fused_hadamard,
                                          bool* fused);

// Builds a decoder from a validated packed checkpoint. kPacked needs every quantized site to fit the
// integer kernels (weights packed, activations enabled at 4 bits low / 8 bits high with the weights'
// split); otherwise it throws UnsupportedError naming the site and suggesting --mode simulate.
// Dense-stored sites run as dense linears in both modes; sites whose activations are not quantized
// run on dequantized weights (weight-only). The packed mode runs on device "cpu" (PackedCpuLinear,
// PackedKvCacheQuant) or, in a binary built with CUDA and a CUDA libtorch, on "cuda" (PackedCudaLinear,
// PackedCudaKvCacheQuant of packed_cuda.h; float32 or bfloat16 compute); otherwise UnsupportedError.
Decoder load_packed_model(const format::PackedCheckpoint& checkpoint, const LoadOptions& options,
                          ExecutionMode mode);

// Any model directory: a HF directory (mode must be unset), or a resq packed checkpoint (mode
// defaults to kPacked). Throws UsageError for --mode on a non-quantized directory.
Decoder load_model_for_eval(const std::string& dir, const LoadOptions& options,
                            std::optional<ExecutionMode> mode = std::nullopt);

// True when `dir` holds a resq packed checkpoint (resq_config.json).
bool is_quantized_model_dir(const std::string& dir);

}  // namespace resq
