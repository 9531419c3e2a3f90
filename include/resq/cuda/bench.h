// `resq bench` on the GPU: the CUDA mixed W4A4+W8A8 GEMM (with and without the fused activation
// quantizer) against cuBLASLt bf16 and cuBLASLt int8 IMMA at the layer shapes of real models.
// Compiled into resq_core with or without CUDA; without it, run_cuda_gemm_bench throws.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace resq {

struct CudaBenchOptions {
  std::vector<int64_t> ms = {1, 16, 128, 2048, 4096};
  std::vector<std::string> models;  // empty = all (see bench_layer_shapes)
  int warmup = 3;
  int repeats = 20;
  bool flush_l2 = true;   // overwrite a buffer of 2x the L2 size before every timed call
  bool int8_baseline = true;
  uint64_t seed = 0;
};

// Runs every (shape, M); returns {"device", "sm", "clock_mhz", "mem_clock_mhz", "l2_bytes",
// "cuda_runtime", "build_type", "gemm_path", "decode_path", "copy_gbps" (device-to-device
// cudaMemcpy, read + write bytes), "warmup", "repeats", "flush_l2", "rows": [{"model", "layer",
// "M", "N", "K", "K8", "backend", "path", "us", "tflops", "gbps", "copy_gbps", "pct_of_copy",
// "speedup_vs_bf16", "speedup_vs_int8"}]}. Backends: "cublaslt-bf16", "cublaslt-int8" (int32
// output, no epilogue), "resq-gemm" (pre-quantized activations, bf16 output), "resq-quant+gemm"
// (bf16 input quantized on the fly, then the GEMM) — both with the kernel PackedCudaLinear picks
// (path "decode" / "decode-fused" for M <= 16, "tile" above) — and at M <= 16 also
// "resq-gemm-tile" / "resq-quant+gemm-tile" (the tile kernel, for before/after in one run).
// Timings: CUDA events around each call, median over repeats.
// Throws UsageError("... no CUDA device ... use --cpu") when there is no device or no CUDA build.
nlohmann::json run_cuda_gemm_bench(const CudaBenchOptions& options,
                                   void (*on_row)(const nlohmann::json& row) = nullptr);

}  // namespace resq
