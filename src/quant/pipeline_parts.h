// The stages of the quantization pipeline (src/quant/pipeline.cpp runs them), private to src/quant:
// process memory, calibration statistics, norm folding + rotations + fusion, checkpoint output.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "resq/format/checkpoint.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/quantizers.h"
#include "resq/quant/recipe.h"

namespace resq::pipeline {

// ---------------------------------------------------------------------------- where it computes (pipeline_memory.cpp)

// How the forward passes multiply: float32 (reference), bf16 products with float32 accumulation
// (CPU, oneDNN), TF32 tensor-core products with float32 accumulation (CUDA).
enum class Products { kFp32, kBf16, kTf32 };
const char* products_name(Products p);

// Where and how the pipeline computes. generic: the device-generic torch-op paths (Gram matrices by
// float64 GEMMs on the device, PCA by torch's eigh, GPTQ by detail::gptq_quantize_weight_torch, the
// online Hadamard by apply_online_hadamard_torch) instead of the CPU's raw loops and LAPACK calls;
// always on CUDA, and on the CPU with RESQ_QUANTIZE_GENERIC=1 (tests and A/B checks of those paths).
struct ComputePlan {
  at::Device device = at::Device(at::kCPU);
  bool generic = false;
  Products products = Products::kFp32;
};
// The plan of --device `device` for a model with hidden size `hidden`: products bf16 on the CPU and
// TF32 on CUDA for hidden >= 1024 (where the forward passes dominate), else float32;
// RESQ_QUANTIZE_PRODUCTS=fp32|bf16|tf32 overrides (UsageError for a value the device cannot do).
ComputePlan make_compute_plan(const at::Device& device, int64_t hidden);

// The pipeline's device memory, estimated from the shapes: what a run of `nsamples` x `seqlen`
// tokens with `chunk` windows per forward call keeps on a device. Always: the hidden states and one
// layer in float32 with its float64 fusion temporaries. Calibration adds the embeddings + lm_head,
// one chunk's activations and the U_A Gram; the weight stage the float64 Hessians (+ float32 partial
// sums with TF32) and either a chunk's activations or GPTQ of the widest linear (its factorization
// holds 3 [K, K] float64 beside the Hessian, plus U and the W/Q/D copies). The peak is the larger stage.
struct DeviceMemoryEstimate {
  double hidden_gib = 0, layer_gib = 0, statistics_gib = 0, gptq_gib = 0, activations_gib = 0, globals_gib = 0,
         calibration_gram_gib = 0;
  double total_gib() const {
    return hidden_gib + layer_gib +
           std::max(globals_gib + activations_gib + calibration_gram_gib, statistics_gib + std::max(activations_gib, gptq_gib));
  }
};
DeviceMemoryEstimate estimate_device_memory(const ModelConfig& c, int64_t nsamples, int64_t seqlen, int64_t chunk,
                                            const ComputePlan& plan, int64_t global_bytes_per_element);

// While alive, float32 matmuls on CUDA may use TF32 tensor cores when `enable` (restored after).
class Tf32Scope {
 public:
  explicit Tf32Scope(bool enable);
  ~Tf32Scope();
  Tf32Scope(const Tf32Scope&) = delete;
  Tf32Scope& operator=(const Tf32Scope&) = delete;

 private:
  bool previous_;
  bool enabled_;
};

// ---------------------------------------------------------------------------- memory (pipeline_memory.cpp)

double seconds_since(std::chrono::steady_clock::time_point t);
double peak_rss_gib();
// The device whose memory memory_note() reports besides the host's (CUDA only; cpu = none).
void set_memory_note_device(const at::Device& device);
// "RSS x GiB (peak y)" (+ "GPU u / t GiB (peak p)" on CUDA); detail adds glibc's heap size, its part
// in use and mmap()ed blocks.
std::string memory_note(bool detail = false);
// Keeps every buffer up to 32 MiB on the heap and disables automatic trimming (process-wide).
void tune_malloc_for_pipeline();
// End of a layer: hands the heap's free pages back to the OS (malloc_trim).
void release_free_heap();

// ---------------------------------------------------------------------------- calibration (pipeline_calibration.cpp)

// Uncentered second moments XᵀX [F, F] in float64 from inputs x2 [n, F], added call by call.
// bf16 = true: the products are those of the bf16-rounded inputs (exactly what a bf16-product
// linear multiplies, see Decoder::set_matmul_dtype), summed by oneDNN in a float32 buffer over up to
// kFlushRows rows and then added into the float64 accumulator (~10x faster than float64 GEMMs; the
// float32 partial sums over <= 16k rows lose nothing that matters next to float64 accumulation).
// bf16 = false: one float64 GEMM per call (the reference path). Buffers are kept across reset() so
// that a new layer does not page-fault 768 MiB of fresh memory for an 8192-wide down_proj.
// On a device (generic plans): products kFp32 = one float64 GEMM per call on the device (the
// reference semantics); kTf32 = TF32 products summed by cuBLAS in a float32 buffer over up to
// kFlushRows rows, then added into the float64 accumulator (the CUDA analogue of the bf16 path, with
// 10 instead of 7 mantissa bits). The accumulator lives on `device`.
class GramAccumulator {
 public:
  static constexpr int64_t kFlushRows = 16384;
  GramAccumulator(int64_t F, Products products, const at::Device& device);
  void add(const at::Tensor& x2);
  // The float64 sum of everything added since the last reset().
  const at::Tensor& result();
  void reset();
  void release_partial();

 private:
  void flush();
  Products products_;
  at::Tensor acc_;      // [F, F] float64 on the device
  at::Tensor partial_;  // [F, F] float32 (bf16 / tf32 only)
  int64_t pending_ = 0;
};

// The covariances the ResQ bases come from: U_A (attention and MLP inputs of every layer, one
// [d, d]), U_B (v_proj outputs per layer and KV head), U_C (keys after RoPE per layer and KV head).
class CovarianceObserver : public ForwardObserver {
 public:
  CovarianceObserver(const ModelConfig& c, const ComputePlan& plan);
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override;
  void on_keys(int64_t layer, const at::Tensor& k) override;
  void on_values(int64_t layer, const at::Tensor& v) override;
  // Call once after the calibration pass.
  void finish();
  const ModelConfig& c_;
  at::Device device_;
  GramAccumulator gram_a_;
  at::Tensor cov_a;               // [d, d] float64, set by finish()
  std::vector<at::Tensor> cov_v;  // per layer [Hkv, hd, hd]
  std::vector<at::Tensor> cov_k;  // per layer [Hkv, hd, hd]
};

// Hessians (XᵀX of the inputs, float64) of one layer's linears for GPTQ; one observer serves every
// layer (reset() between layers keeps its buffers).
class HessianObserver : public ForwardObserver {
 public:
  explicit HessianObserver(const ComputePlan& plan = {}) : plan_(plan) {}
  void on_linear_input(const LinearSite& site, const at::Tensor& x) override;
  // The layer's Hessians [K, K] float64 (views of the accumulators: valid until reset()). Frees the
  // float32 partial sums first (256 MiB for an 8192-wide down_proj) so GPTQ has that memory.
  std::map<LinearKind, at::Tensor> finish();
  void reset();

 private:
  ComputePlan plan_;
  std::map<LinearKind, GramAccumulator> grams_;
};

// ---------------------------------------------------------------------------- model transforms (pipeline_rotations.cpp)

// A float64 [rows, cols] CPU tensor holding m (a copy).
at::Tensor to_tensor(const MatrixXdR& m);

// The linear as a DenseLinear (Error naming `what` otherwise: every stage before writing keeps them dense).
DenseLinear& dense(const std::shared_ptr<Linear>& linear, const std::string& what);

// Untie lm_head and fold the final RMSNorm weight into it (norm weight := 1); optionally subtract
// each embedding row's mean (QuaRot/official ResQ; changes the function for RMSNorm models).
void prepare_globals(Decoder& m, const Recipe& recipe);
// Folds a layer's RMSNorm weights into the linears that read them (q/k/v; gate/up), norms := 1.
void prepare_layer(DecoderLayer& L, at::ScalarType dt);

struct Rotations {
  at::Tensor u_a;                            // [d, d] or undefined
  std::vector<std::vector<at::Tensor>> u_b;  // [layer][kv head] -> [hd, hd]
  std::vector<std::vector<at::Tensor>> u_c;  // [layer][kv head] -> [hd, hd] (empty without qk_rotation)
  std::optional<OnlineHadamard> u_d;
  nlohmann::json spectra = nlohmann::json::object();
};
// The recipe's rotations: PCA bases (resq, from `cov`) with subspaces r of d and r_h of hd, or
// randomized Hadamards (quarot), or none; random streams derived from `seed` per site. PCA by LAPACK
// on the host, or by torch's eigh on plan.device when plan.generic. The matrices end on plan.device.
Rotations build_rotations(const Decoder& m, const Recipe& recipe, const CovarianceObserver* cov, uint64_t seed, int64_t r,
                          int64_t r_h, const ComputePlan& plan = {});
// Fuses U_A into embed_tokens and the lm_head input.
void fuse_globals(Decoder& m, const Rotations& R);
// Fuses U_A, U_B and U_D into one layer's weights (exact, float64) and installs the U_C/U_D online
// transforms; U_D by apply_online_hadamard_torch when `generic` (on the weights' device).
void fuse_layer(Decoder& m, int64_t l, const Rotations& R, bool generic = false);

// ---------------------------------------------------------------------------- checkpoint output (pipeline_output.cpp)

// The dtype of embeddings / lm_head in the checkpoint: --globals-dtype, else the source model's
// 16-bit dtype, else float32 (an fp32 source keeps its exact values).
DType choose_globals_dtype(const std::string& requested, const ModelConfig& c);
// The checkpoint metadata of a recipe applied to a model: the layout's per-site splits, bits and
// storage, the KV cache and online-transform settings.
format::CheckpointMeta checkpoint_meta(const ModelConfig& c, const Recipe& recipe, const format::ModelLayout& layout,
                                       const Rotations& R, DType globals_dtype);
// The rotated embeddings, final norm and lm_head.
void write_globals(format::CheckpointWriter& writer, const Decoder& m, const format::CheckpointMeta& meta);
// Layer l's tensors: norms, each linear (packed integers + scales, or dense weights) and U_C.
// Returns {site: checksum} for the packed linears.
nlohmann::json write_layer_tensors(format::CheckpointWriter& writer, const Decoder& m, int64_t l, const Rotations& R,
                                   const format::CheckpointMeta& meta, const std::map<LinearKind, QuantizedWeight>& quantized);
// The online Hadamard, then config.json (untied), resq_config.json and tokenizer files; renames into place.
void finish_output(format::CheckpointWriter& writer, const Decoder& m, const QuantizeOptions& o, const Rotations& R,
                   const format::CheckpointMeta& meta);
// The report's "checkpoint" object: the written checkpoint's sizes against the bit budget the
// metadata implies (container bits + two fp32 scales per row + o_proj's int32 perm).
nlohmann::json checkpoint_report(const std::string& dir, const format::CheckpointMeta& meta, const format::CheckpointSizes& sizes);

}  // namespace resq::pipeline
