// Decoder-layer prefill benchmark of `resq bench` (GPU): one random decoder layer of a real model
// shape run as a bf16 layer (cuBLAS) and as the resq packed layer (CUDA W4A4+W8A8 linears, 4/8 KV).
// The site specs are pure C++; the layers and the timing need a CUDA build (stubs throw otherwise).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "resq/format/checkpoint.h"
#include "resq/model/config.h"

namespace resq {

class Decoder;

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
  kBf16,             // DenseLinear bf16 weights, no quantizer, no transform (the baseline)
  kResqPacked,       // PackedCudaLinear sites, PackedCudaKvCacheQuant K/V, U_C qk rotation (on
                     // "cpu": the CPU integer runtime, PackedCpuLinear / PackedKvCacheQuant)
  kResqDequantized,  // the packed layer's dequantized weights as bf16 DenseLinear, same U_C and
                     // down_proj Hadamard, no activation / KV quantization (test reference)
};

// A Decoder of config with num_layers = 1 on `device` ("cuda", "cuda:N" or "cpu"), compute dtype
// bf16, layer 0 built from random weights N(0, 0.02^2) (RMSNorm weights 1) drawn with `seed`: the
// same weights, U_C and Hadamard for every kind. kResqPacked on cuda needs a CUDA build, a CUDA
// libtorch and an sm_80+ device (UnsupportedError otherwise); on cpu it runs anywhere.
Decoder make_bench_layer(const ModelConfig& config, BenchLayerKind kind, uint64_t seed, const std::string& device);

struct LayerBenchOptions {
  std::vector<std::string> models;  // synthetic_shape_config names; empty = {"llama-3-8b"}
  int64_t seqlen = 2048;
  int warmup = 3;
  int repeats = 20;
  uint64_t seed = 0;
};

// For each model: x [1, seqlen, d] bf16 on cuda:0, Decoder::run_layer(0, x, rope) of both layers
// timed with CUDA events on stream 0 (warm-up, median of repeats, no L2 flush: a layer's weights
// exceed L2 anyway). Also times the seven linears alone on inputs of their shapes (the GEMM share;
// for resq that is activation quantization + GEMM). Returns {"device", "sm", "seqlen", "warmup",
// "repeats", "layer_prefill": [{"model", "seqlen", "bf16_us", "resq_us", "speedup",
// "bf16_linears_us", "resq_linears_us"}]}. Throws UsageError ("... use --cpu") without a CUDA
// build, a CUDA libtorch or an sm_80+ device.
nlohmann::json run_layer_prefill_bench(const LayerBenchOptions& options,
                                       void (*on_row)(const nlohmann::json& row) = nullptr);

}  // namespace resq
