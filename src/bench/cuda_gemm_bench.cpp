// GPU GEMM benchmark for `resq bench`: resq's CUDA W4A4+W8A8 kernels vs cuBLASLt bf16 and int8,
// timed with CUDA events (warm-up, L2 flush before each timed call, median of repeats).
#include "resq/cuda/bench.h"

#include "resq/bench/cpu_gemm_bench.h"
#include "resq/common/error.h"

#if defined(RESQ_HAVE_CUDA)

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <random>

#include "cpu/quantize.h"
#include "cuda/act_quant.cuh"
#include "cuda/decode_gemv.cuh"
#include "cuda/mixed_gemm.cuh"
#include "resq/cuda/check.h"
#include "resq/cuda/device.h"
#include "cuda/device_linear.h"
#include "cuda/gpu_layout.h"

namespace resq {
namespace {

using gpu::DeviceBuffer;

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    out[i] = gpu::f32_bits_to_bf16(bits);
  }
  return out;
}

// One cuBLASLt "TN" matmul Y[M][N] (row-major) = X[M][K] * W[N][K]^T, i.e. column-major
// Y^T (N x M) = op_T(W: K x N) * X^T (K x M). bf16 in/out with fp32 compute, or int8 in with
// int32 out and int32 compute (IMMA).
class LtMatmul {
 public:
  LtMatmul(cublasLtHandle_t h, bool int8, int64_t M, int64_t N, int64_t K, void* workspace,
           size_t ws_bytes)
      : h_(h), int8_(int8), ws_(workspace), ws_bytes_(ws_bytes) {
    const cudaDataType_t in = int8 ? CUDA_R_8I : CUDA_R_16BF;
    const cudaDataType_t out = int8 ? CUDA_R_32I : CUDA_R_16BF;
    const cublasComputeType_t compute = int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    const cudaDataType_t scale = int8 ? CUDA_R_32I : CUDA_R_32F;
    RESQ_CUDA_CHECK(cublasLtMatmulDescCreate(&desc_, compute, scale));
    const cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
    RESQ_CUDA_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
    RESQ_CUDA_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
    RESQ_CUDA_CHECK(cublasLtMatrixLayoutCreate(&a_, in, static_cast<uint64_t>(K), static_cast<uint64_t>(N), K));
    RESQ_CUDA_CHECK(cublasLtMatrixLayoutCreate(&b_, in, static_cast<uint64_t>(K), static_cast<uint64_t>(M), K));
    RESQ_CUDA_CHECK(cublasLtMatrixLayoutCreate(&c_, out, static_cast<uint64_t>(N), static_cast<uint64_t>(M), N));
    RESQ_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref_));
    RESQ_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref_, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &ws_bytes_, sizeof(ws_bytes_)));
    int found = 0;
    const cublasStatus_t st =
        cublasLtMatmulAlgoGetHeuristic(h_, desc_, a_, b_, c_, c_, pref_, 1, &heur_, &found);
    ok_ = st == CUBLAS_STATUS_SUCCESS && found > 0;
  }
  ~LtMatmul() {
    if (pref_) cublasLtMatmulPreferenceDestroy(pref_);
    if (c_) cublasLtMatrixLayoutDestroy(c_);
    if (b_) cublasLtMatrixLayoutDestroy(b_);
    if (a_) cublasLtMatrixLayoutDestroy(a_);
    if (desc_) cublasLtMatmulDescDestroy(desc_);
  }
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;
  bool ok() const { return ok_; }
  void run(const void* w, const void* x, void* y, cudaStream_t stream) {
    const float alpha_f = 1.0f, beta_f = 0.0f;
    const int32_t alpha_i = 1, beta_i = 0;
    const void* alpha = int8_ ? static_cast<const void*>(&alpha_i) : &alpha_f;
    const void* beta = int8_ ? static_cast<const void*>(&beta_i) : &beta_f;
    RESQ_CUDA_CHECK(cublasLtMatmul(h_, desc_, alpha, w, a_, x, b_, beta, y, c_, y, c_, &heur_.algo, ws_,
                                   ws_bytes_, stream));
  }

 private:
  cublasLtHandle_t h_;
  bool int8_;
  void* ws_;
  size_t ws_bytes_;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulPreference_t pref_ = nullptr;
  cublasLtMatmulHeuristicResult_t heur_{};
  bool ok_ = false;
};

// Device-to-device copy bandwidth (GB/s, read + write bytes) of a 512 MiB cudaMemcpyAsync: the
// practical peak the memory-bound rows are measured against.
double measure_copy_gbps(int warmup, int repeats, cudaStream_t stream) {
  const size_t bytes = size_t{512} << 20;
  DeviceBuffer<uint8_t> src(bytes), dst(bytes);
  RESQ_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes, stream));
  const double us = gpu::median_event_time_us(std::max(warmup, 1), std::max(repeats, 5), nullptr, stream, [&] {
    RESQ_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream));
  });
  return 2.0 * static_cast<double>(bytes) / us * 1e-3;
}

}  // namespace

nlohmann::json run_cuda_gemm_bench(const CudaBenchOptions& o, void (*on_row)(const nlohmann::json&)) {
  if (o.repeats < 1 || o.warmup < 0) throw UsageError("--repeats must be >= 1 and --warmup >= 0");
  for (int64_t m : o.ms) {
    if (m < 1) throw UsageError("--m values must be >= 1, got " + std::to_string(m));
  }
  const auto shapes = bench_layer_shapes(o.models);
  if (gpu::cuda_device_count() == 0) {
    throw UsageError("resq bench: no CUDA device (cudaGetDeviceCount reports none); use --cpu for "
                     "the CPU benchmark");
  }
  gpu::require_sm80("resq bench");
  int dev = 0;
  RESQ_CUDA_CHECK(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  RESQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  int clock_khz = 0, mem_khz = 0, l2 = 0, runtime = 0;
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev));
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, dev));
  RESQ_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
  RESQ_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  nlohmann::json result = {{"device", std::string(prop.name)},
                           {"sm", "sm_" + std::to_string(prop.major) + std::to_string(prop.minor)},
                           {"sm_count", prop.multiProcessorCount},
                           {"clock_mhz", clock_khz / 1000},
                           {"mem_clock_mhz", mem_khz / 1000},
                           {"l2_bytes", l2},
                           {"cuda_runtime", runtime},
                           {"build_type", RESQ_BUILD_TYPE},
                           {"gemm_path", gpu::mixed_gemm_path_name(prop.major, prop.minor)},
                           {"decode_path", gpu::decode_gemv_path_name(prop.major, prop.minor)},
                           {"warmup", o.warmup},
                           {"repeats", o.repeats},
                           {"flush_l2", o.flush_l2},
                           {"rows", nlohmann::json::array()}};

  cudaStream_t stream = nullptr;
  RESQ_CUDA_CHECK(cudaStreamCreate(&stream));
  cublasLtHandle_t lt = nullptr;
  RESQ_CUDA_CHECK(cublasLtCreate(&lt));
  struct Cleanup {
    cudaStream_t s;
    cublasLtHandle_t h;
    ~Cleanup() {
      cublasLtDestroy(h);
      cudaStreamDestroy(s);
    }
  } cleanup{stream, lt};
  const size_t ws_bytes = size_t{32} << 20;
  DeviceBuffer<uint8_t> workspace(ws_bytes);
  DeviceBuffer<uint8_t> flush(o.flush_l2 ? static_cast<size_t>(std::max(l2, 1 << 20)) * 2 : 0);
  const double copy_gbps = measure_copy_gbps(o.warmup, o.repeats, stream);
  result["copy_gbps"] = copy_gbps;

  std::mt19937 rng(static_cast<uint32_t>(o.seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const LayerShape& s : shapes) {
    const int64_t N = s.N, K = s.K, K8 = s.K8, K4 = K - K8;
    std::vector<float> w(static_cast<size_t>(N * K));
    for (auto& v : w) v = normal(rng) * 0.02f;
    const format::PackedLinear packed = cpu::quantize_linear_rtn(w.data(), nullptr, {N, K4, K8});
    const gpu::DevicePackedLinear d_w(packed.view());
    const gpu::GpuLinearView wv = d_w.view();
    DeviceBuffer<uint16_t> d_w_bf16(to_bf16(w));
    // int8 baseline operands: random int8 (IMMA speed does not depend on the values).
    std::vector<int8_t> w_i8(static_cast<size_t>(N * K));
    for (size_t i = 0; i < w_i8.size(); ++i) w_i8[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    DeviceBuffer<int8_t> d_w_i8(o.int8_baseline ? w_i8 : std::vector<int8_t>{});

    for (int64_t M : o.ms) {
      std::vector<float> x(static_cast<size_t>(M * K));
      for (auto& v : x) v = normal(rng);
      DeviceBuffer<uint16_t> d_x_bf16(to_bf16(x));
      const int64_t ldq4 = gpu::gpu_row_stride(gpu::part4_row_bytes(K4));
      const int64_t ldq8 = gpu::gpu_row_stride(K8);
      DeviceBuffer<uint8_t> d_xq4(static_cast<size_t>(M * ldq4)), d_xq8(static_cast<size_t>(M * ldq8));
      DeviceBuffer<float> d_sx4(static_cast<size_t>(M)), d_sx8(static_cast<size_t>(M));
      DeviceBuffer<int32_t> d_zx4(static_cast<size_t>(M)), d_zx8(static_cast<size_t>(M));
      DeviceBuffer<uint16_t> d_y(static_cast<size_t>(M * N));
      gpu::ActQuantArgs qa;
      qa.M = M;
      qa.K4 = K4;
      qa.K8 = K8;
      qa.xq4 = d_xq4.get();
      qa.ldq4 = ldq4;
      qa.xq8 = d_xq8.get();
      qa.ldq8 = ldq8;
      qa.sx4 = d_sx4.get();
      qa.zx4 = d_zx4.get();
      qa.sx8 = d_sx8.get();
      qa.zx8 = d_zx8.get();
      const gpu::GpuActivationsView xv = gpu::quantized_activations_view(qa);
      gpu::act_quant_bf16_cuda(d_x_bf16.get(), qa, stream);
      RESQ_CUDA_CHECK(cudaStreamSynchronize(stream));

      const double flops = 2.0 * static_cast<double>(M) * N * K;
      // path: "cublaslt", "tile" (mixed_gemm_cuda) or "decode" (decode_gemv, M <= 16), and for the
      // decode quant+gemm row whether the quantizer ran fused ("decode-fused") or as act_quant.
      auto emit = [&](const std::string& backend, const std::string& path, double us, double bytes, double t_bf16,
                      double t_i8) {
        nlohmann::json r = {{"model", s.model}, {"layer", s.layer}, {"M", M}, {"N", N}, {"K", K}, {"K8", K8},
                            {"backend", backend}, {"path", path}, {"us", us}, {"tflops", flops / us * 1e-6},
                            {"gbps", bytes / us * 1e-3}, {"copy_gbps", copy_gbps},
                            {"pct_of_copy", 100.0 * bytes / us * 1e-3 / copy_gbps},
                            {"speedup_vs_bf16", t_bf16 > 0 ? t_bf16 / us : 0.0},
                            {"speedup_vs_int8", t_i8 > 0 ? t_i8 / us : 0.0}};
        result["rows"].push_back(r);
        if (on_row) on_row(r);
      };
      DeviceBuffer<uint8_t>* fl = o.flush_l2 ? &flush : nullptr;

      LtMatmul bf16(lt, false, M, N, K, workspace.get(), ws_bytes);
      double t_bf16 = 0.0;
      if (bf16.ok()) {
        t_bf16 = gpu::median_event_time_us(o.warmup, o.repeats, fl, stream,
                         [&] { bf16.run(d_w_bf16.get(), d_x_bf16.get(), d_y.get(), stream); });
      }
      double t_i8 = 0.0;
      std::unique_ptr<DeviceBuffer<int8_t>> d_x_i8;
      std::unique_ptr<DeviceBuffer<int32_t>> d_y_i32;
      if (o.int8_baseline) {
        LtMatmul i8(lt, true, M, N, K, workspace.get(), ws_bytes);
        if (i8.ok()) {
          d_x_i8 = std::make_unique<DeviceBuffer<int8_t>>(static_cast<size_t>(M * K));
          d_y_i32 = std::make_unique<DeviceBuffer<int32_t>>(static_cast<size_t>(M * N));
          RESQ_CUDA_CHECK(cudaMemset(d_x_i8->get(), 1, d_x_i8->size()));
          t_i8 = gpu::median_event_time_us(o.warmup, o.repeats, fl, stream,
                         [&] { i8.run(d_w_i8.get(), d_x_i8->get(), d_y_i32->get(), stream); });
        }
      }
      const double bytes_bf16 = 2.0 * (N * K + M * K + M * N);
      if (bf16.ok()) emit("cublaslt-bf16", "cublaslt", t_bf16, bytes_bf16, t_bf16, t_i8);
      if (t_i8 > 0) emit("cublaslt-int8", "cublaslt", t_i8, 1.0 * (N * K + M * K) + 4.0 * M * N, t_bf16, t_i8);

      const double packed_bytes_w = static_cast<double>(N) * (ldq4 + ldq8) + 16.0 * N;
      const double packed_bytes_x = static_cast<double>(M) * (ldq4 + ldq8) + 16.0 * M;
      const double bytes_gemm = packed_bytes_w + packed_bytes_x + 2.0 * M * N;
      const double bytes_full = packed_bytes_w + 2.0 * M * K + 2.0 * packed_bytes_x + 2.0 * M * N;
      // "resq-gemm" / "resq-quant+gemm": what PackedCudaLinear runs at this M (the decode kernel for
      // M <= 16, else the tile kernel); at M <= 16 the tile kernel is also timed ("-tile" rows), so
      // before and after sit side by side in one run.
      const bool decode = gpu::decode_gemv_applies(M);
      const bool fused = gpu::decode_fused_quant_applies(M, K);
      auto time_tile = [&](bool quant) {
        return gpu::median_event_time_us(o.warmup, o.repeats, fl, stream, [&] {
          if (quant) gpu::act_quant_bf16_cuda(d_x_bf16.get(), qa, stream);
          gpu::mixed_gemm_cuda(xv, wv, d_y.get(), N, gpu::GemmOutput::kBFloat16, stream);
        });
      };
      if (decode) {
        const double t_gemm = gpu::median_event_time_us(o.warmup, o.repeats, fl, stream, [&] {
          gpu::decode_gemv_cuda(xv, wv, d_y.get(), N, gpu::GemmOutput::kBFloat16, stream);
        });
        emit("resq-gemm", "decode", t_gemm, bytes_gemm, t_bf16, t_i8);
        const double t_full = gpu::median_event_time_us(o.warmup, o.repeats, fl, stream, [&] {
          if (fused) {
            gpu::decode_quant_gemv_bf16_cuda(d_x_bf16.get(), M, K, nullptr, 1.0f, 1.0f, wv, d_y.get(), N,
                                             gpu::GemmOutput::kBFloat16, stream);
          } else {
            gpu::act_quant_bf16_cuda(d_x_bf16.get(), qa, stream);
            gpu::decode_gemv_cuda(xv, wv, d_y.get(), N, gpu::GemmOutput::kBFloat16, stream);
          }
        });
        // The fused kernel reads the bf16 rows and writes y only.
        emit("resq-quant+gemm", fused ? "decode-fused" : "decode", t_full,
             fused ? packed_bytes_w + 2.0 * M * K + 2.0 * M * N : bytes_full, t_bf16, t_i8);
        emit("resq-gemm-tile", "tile", time_tile(false), bytes_gemm, t_bf16, t_i8);
        emit("resq-quant+gemm-tile", "tile", time_tile(true), bytes_full, t_bf16, t_i8);
      } else {
        emit("resq-gemm", "tile", time_tile(false), bytes_gemm, t_bf16, t_i8);
        emit("resq-quant+gemm", "tile", time_tile(true), bytes_full, t_bf16, t_i8);
      }
    }
  }
  return result;
}

}  // namespace resq

#else  // !RESQ_HAVE_CUDA

namespace resq {

nlohmann::json run_cuda_gemm_bench(const CudaBenchOptions&, void (*)(const nlohmann::json&)) {
  throw UsageError("resq bench: this build has no CUDA kernels, so no CUDA device can be used "
                   "(configure with -DRESQ_WITH_CUDA=ON where nvcc is installed); use --cpu for the "
                   "CPU benchmark");
}

}  // namespace resq

#endif
