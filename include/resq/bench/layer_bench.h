// Decoder-layer prefill benchmark of `resq bench` (GPU): one random decoder layer of a real model
// shape run as a plain-libtorch bf16 layer (the baseline, plain_layer.h), as resq's own bf16 layer and
// as the resq packed layer (CUDA W4A4+W8A8 linears, 4/8 KV), and the one builder of bench layers.
// The site specs are pure C++; the GPU timing needs a CUDA build (a stub throws otherwise).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "resq/format/checkpoint.h"
#include "resq/model/config.h"

namespace resq {

class Decoder;
struct PlainLayerWeights;

// The seven sites of one layer split as configs/resq.json does (q, k, v, o, gate, up, down order):
// q/k/v/gate/up: the last K/8 input columns 8-bit ("last"); o_proj: the last head_dim/8 channels of
// every head 8-bit ("per_head", packed column order = low columns then high columns, a perm);
// down_proj: all 4-bit (its input gets the online Hadamard). Activations enabled 4/8 with the same
// split, clip 1.0, no bias (Llama). Throws ShapeError for a config whose head_dim or hidden size is
// not a multiple of 8.
std::vector<format::SiteSpec> bench_layer_site_specs(const ModelConfig& config);

// The head_dim channels kept 8-bit in the KV cache (head_dim / 8, as r_h of ResQ).
int64_t bench_layer_r_h(const ModelConfig& config);

enum class BenchLayerKind {
  kBf16,             // DenseLinear weights in the compute dtype (bf16), no quantizer, no transform
  kResqPacked,       // PackedCudaLinear sites, PackedCudaKvCacheQuant K/V, U_C qk rotation (on
                     // "cpu": the CPU integer runtime, PackedCpuLinear / PackedKvCacheQuant)
  kResqDequantized,  // the packed layer's dequantized weights as DenseLinear, same U_C and
                     // down_proj Hadamard, no activation / KV quantization (test reference)
};

// How bench layers are built.
struct BenchBuildOptions {
  // Compute dtype of the Decoder: "bfloat16" (the benchmarks) or "float32" / "float64" (host tests).
  std::string dtype = "bfloat16";
  // Where the random weights are drawn and RTN-quantized (draw_bench_layer_weights): "cpu" gives the
  // same numbers on every machine; the build device (e.g. "cuda:0") is much faster for whole models.
  std::string draw_device = "cpu";
};

// Fills layer `index` of m (a Decoder of the bench config: synthetic shape, any num_layers) with
// bench layer `index` of `kind` on m's device in m's dtype: weights from draw_bench_layer_weights(
// config, seed, index, options.draw_device) — or `weights` when given (float32, any device), RMSNorm
// weights 1, no biases; for the resq kinds every linear RTN-quantized per output channel with the
// bench_layer_site_specs split (rtn_quantize_weight on the draw device), a
// random orthogonal U_C [hd, hd] on q/k and the online Hadamard of size ffn on down_proj's input
// (a random orthogonal block when ffn is not a power of two times a known Hadamard size), both from
// Rng::derive(seed, "bench_layer", {index}). The same seed and index give the same weights, U_C and
// Hadamard for every kind. kResqPacked on cuda needs a CUDA build, a CUDA libtorch and an sm_80+
// device (UnsupportedError otherwise); on cpu it runs anywhere. Different layers may be built from
// different threads (the linears' device buffers go to the thread's current CUDA device).
void build_bench_layer(Decoder& m, int64_t index, BenchLayerKind kind, uint64_t seed, const BenchBuildOptions& options,
                       const PlainLayerWeights* weights = nullptr);

// A Decoder of config with num_layers = 1 on `device` ("cuda", "cuda:N" or "cpu"), layer 0 built by
// build_bench_layer (no embedding, final norm or lm_head: only run_layer works).
Decoder make_bench_layer(const ModelConfig& config, BenchLayerKind kind, uint64_t seed, const std::string& device,
                         const BenchBuildOptions& options = {}, const PlainLayerWeights* weights = nullptr);

struct LayerBenchOptions {
  std::vector<std::string> models;  // synthetic_shape_config names; empty = {"llama-3-8b"}
  int64_t seqlen = 2048;
  int warmup = 3;
  int repeats = 20;
  uint64_t seed = 0;
};

// For each model: x [1, seqlen, d] bf16 on cuda:0, the three layers of the same weights (drawn
// on the CPU, seed `seed`, layer 0) timed with CUDA events on stream 0 (warm-up, median of repeats,
// no L2 flush: a layer's weights exceed L2 anyway): PlainTorchLayer::forward (the baseline),
// Decoder::run_layer(0, x, rope) of the kBf16 and of the kResqPacked layer. Also times the seven
// linears alone on inputs of their shapes (the GEMM share; for resq that is activation quantization
// + GEMM). Returns {"device", "sm", "seqlen", "warmup", "repeats", "libtorch", "build_type",
// "plain_attention", "layer_prefill": [{"model", "seqlen", "plain_us", "bf16_us", "resq_us",
// "bf16_vs_plain", "packed_vs_plain" (plain_us / x_us), "speedup" (bf16_us / resq_us),
// "bf16_linears_us", "resq_linears_us", "libtorch", "plain_attention"}]}. Throws UsageError
// ("... use --cpu") without a CUDA build, a CUDA libtorch or an sm_80+ device.
nlohmann::json run_layer_prefill_bench(const LayerBenchOptions& options,
                                       void (*on_row)(const nlohmann::json& row) = nullptr);

}  // namespace resq
