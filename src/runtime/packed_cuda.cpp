// The GPU packed runtime (PackedCudaLinear, PackedCudaKvCacheQuant): torch adapters that check the
// tensors and call the plain-pointer CUDA launchers. Compiled to nothing without RESQ_HAVE_CUDA.
#include "resq/runtime/packed_cuda.h"

#if defined(RESQ_HAVE_CUDA)

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

#include "cuda/act_quant.cuh"
#include "cuda/decode_gemv.cuh"
#include "cuda/kv_dequant.cuh"
#include "cuda/mixed_gemm.cuh"
#include "resq/common/error.h"
#include "resq/cuda/check.h"
#include "resq/format/packed.h"

namespace resq {

namespace {

// All launches go to the legacy default stream; see the note in packed_cuda.h. It is also the stream
// torch's caching allocator tags the scratch and output tensors with (allocated while torch's current
// stream is its default stream), so freeing them right after the asynchronous launches is safe: the
// allocator hands the memory out again only to work ordered after ours on that stream.
constexpr cudaStream_t kStream = nullptr;

// "[2, 5, 64] float32 on cuda:0" for error messages.
std::string describe(const at::Tensor& x) {
  std::string s = "[";
  for (int64_t i = 0; i < x.dim(); ++i) s += (i ? ", " : "") + std::to_string(x.size(i));
  return s + "] " + c10::toString(x.scalar_type()) + " on " + x.device().str();
}

// Makes `device` the current CUDA device for a scope (the launchers use the current device).
class CudaDeviceScope {
 public:
  explicit CudaDeviceScope(int device) {
    RESQ_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) RESQ_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CudaDeviceScope() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
  CudaDeviceScope(const CudaDeviceScope&) = delete;
  CudaDeviceScope& operator=(const CudaDeviceScope&) = delete;

 private:
  int previous_ = 0;
};

// Device scratch for M quantized rows of K4 + K8 columns (act_quant's outputs, the GEMM's input):
// one uint8 tensor from torch's caching allocator, regions xq4 [M][ldq4], xq8 [M][ldq8], sx4, zx4,
// sx8, zx8 [M], each 256-byte aligned. args holds the pointers and strides (clips still to set).
struct ActScratch {
  at::Tensor storage;
  gpu::ActQuantArgs args;
};

ActScratch make_act_scratch(int64_t M, int64_t K4, int64_t K8, const at::Device& device) {
  auto align = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  ActScratch s;
  gpu::ActQuantArgs& a = s.args;
  a.M = M;
  a.K4 = K4;
  a.K8 = K8;
  a.ldq4 = gpu::gpu_row_stride(format::packed4_row_bytes(K4));
  a.ldq8 = gpu::gpu_row_stride(K8);
  const int64_t o_xq8 = align(M * a.ldq4);
  const int64_t o_sx4 = o_xq8 + align(M * a.ldq8);
  const int64_t o_zx4 = o_sx4 + align(4 * M);
  const int64_t o_sx8 = o_zx4 + align(4 * M);
  const int64_t o_zx8 = o_sx8 + align(4 * M);
  const int64_t total = o_zx8 + align(4 * M);
  s.storage = at::empty({total}, at::TensorOptions().dtype(at::kByte).device(device));
  uint8_t* base = s.storage.data_ptr<uint8_t>();
  a.xq4 = K4 > 0 ? base : nullptr;
  a.xq8 = K8 > 0 ? base + o_xq8 : nullptr;
  a.sx4 = reinterpret_cast<float*>(base + o_sx4);
  a.zx4 = reinterpret_cast<int32_t*>(base + o_zx4);
  a.sx8 = reinterpret_cast<float*>(base + o_sx8);
  a.zx8 = reinterpret_cast<int32_t*>(base + o_zx8);
  return s;
}

// Runs act_quant on x (float32 or bfloat16, contiguous [M][K] on the current device).
void launch_act_quant(const at::Tensor& x, const gpu::ActQuantArgs& args) {
  if (x.scalar_type() == at::kBFloat16) {
    gpu::act_quant_bf16_cuda(static_cast<const uint16_t*>(x.data_ptr()), args, kStream);
  } else {
    gpu::act_quant_cuda(static_cast<const float*>(x.data_ptr()), args, kStream);
  }
}

void check_clip(float clip, const std::string& fn) {
  RESQ_CHECK_OR_THROW(clip > 0.0f && clip <= 1.0f, ConfigError,
                      fn + ": clip ratio " + std::to_string(clip) + " outside (0, 1]");
}

}  // namespace

// ------------------------------------------------------------------ PackedCudaLinear

PackedCudaLinear::PackedCudaLinear(const format::PackedLinear& packed, std::vector<int32_t> perm, float clip,
                                   std::shared_ptr<const OnlineHadamard> input_hadamard)
    : N_(packed.dims.N), K4_(packed.dims.K4), K8_(packed.dims.K8), clip_(clip) {
  const std::string fn = "PackedCudaLinear";
  const int64_t K = K4_ + K8_;
  check_clip(clip, fn);
  if (!perm.empty() && static_cast<int64_t>(perm.size()) != K) {
    throw ShapeError(fn + ": perm has " + std::to_string(perm.size()) + " entries, expected K = " + std::to_string(K));
  }
  for (int32_t p : perm) {
    if (p < 0 || p >= K) throw ShapeError(fn + ": perm entry " + std::to_string(p) + " outside [0, K = " + std::to_string(K) + ")");
  }
  const OnlineHadamard* h = input_hadamard.get();
  if (h) {
    if (h->n != K) {
      throw ShapeError(fn + ": online Hadamard of size " + std::to_string(h->n) + " for K = " + std::to_string(K));
    }
    if (static_cast<int64_t>(h->signs.size()) != h->n ||
        static_cast<int64_t>(h->block_matrix.size()) != h->block * h->block || h->pow2 * h->block != h->n) {
      throw ShapeError(fn + ": online Hadamard n = " + std::to_string(h->n) + " (pow2 " + std::to_string(h->pow2) +
                       " x block " + std::to_string(h->block) + ") has " + std::to_string(h->signs.size()) +
                       " signs and a block matrix of " + std::to_string(h->block_matrix.size()) + " entries");
    }
    // No block-size limit: the GPU quantizer stages the block mix in shared memory sized from the
    // device (gpu::plan_hadamard_mix), and act_quant_cuda refuses, naming the sizes, a row that
    // does not fit. Not checked here: these argument checks make no CUDA call.
    if (!perm.empty()) {
      throw UnsupportedError(fn + ": a column permutation together with an online Hadamard (K = " + std::to_string(K) +
                             ") is not supported: the GPU quantizer gathers before it transforms, the CPU runtime after");
    }
  }
  if (K > gpu::kMaxActQuantRow) {
    throw UnsupportedError(fn + ": K = " + std::to_string(K) + " above the GPU quantizer's row limit " +
                           std::to_string(gpu::kMaxActQuantRow));
  }
  RESQ_CUDA_CHECK(cudaGetDevice(&device_));
  weights_ = gpu::DevicePackedLinear(packed.view());  // re-strided to the GPU layout, uploaded
  if (!perm.empty()) perm_ = gpu::DeviceBuffer<int32_t>(perm);
  if (h) {
    const gpu::HadamardRowHost row = gpu::make_hadamard_row_host(h->n, h->pow2, h->block, h->block_matrix, h->signs);
    signs_ = gpu::DeviceBuffer<float>(row.signs);
    if (!row.mix.empty()) mix_ = gpu::DeviceBuffer<float>(row.mix);
    hadamard_params_ = row.view();
    hadamard_params_.signs = signs_.get();
    hadamard_params_.mix = row.mix.empty() ? nullptr : mix_.get();
    hadamard_ = true;
  }
}

at::Tensor PackedCudaLinear::forward(const at::Tensor& x) const {
  // x [..., K] float32 / bfloat16 contiguous on device_ -> y [..., N] in x's dtype
  const int64_t K = K4_ + K8_;
  const std::string fn = "PackedCudaLinear (N = " + std::to_string(N_) + ", K = " + std::to_string(K) + ")";
  if (x.dim() < 1 || x.size(-1) != K) {
    throw ShapeError(fn + ": input " + describe(x) + " has last dimension " + std::to_string(x.dim() ? x.size(-1) : 0) +
                     ", expected " + std::to_string(K));
  }
  if (!x.device().is_cuda()) {
    throw UnsupportedError(fn + ": input " + describe(x) + ": the CUDA integer runtime needs a CUDA tensor");
  }
  if (x.device().index() != device_) {
    throw UnsupportedError(fn + ": input " + describe(x) + ", but the weights are on cuda:" + std::to_string(device_));
  }
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kBFloat16) {
    throw UnsupportedError(fn + ": input " + describe(x) + ": the GPU quantizer reads float32 or bfloat16");
  }
  if (!x.is_contiguous()) throw ShapeError(fn + ": input " + describe(x) + " is not contiguous");
  const int64_t M = K > 0 ? x.numel() / K : 0;
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N_;
  // fp32 output: bit-comparable with PackedCpuLinear, which also computes in fp32 and then casts.
  at::Tensor y = at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(x.device()));
  if (M > 0 && N_ > 0) {
    CudaDeviceScope scope(device_);
    const gpu::GpuLinearView w = weights_.view();
    const int32_t* perm = perm_.size() ? perm_.get() : nullptr;
    // Decode (M <= 16): the memory-bound GEMV, quantizing the rows itself when they are short and
    // need no transform (one launch), else after act_quant (decode_gemv.cuh).
    if (!hadamard_ && gpu::decode_fused_quant_applies(M, K)) {
      if (x.scalar_type() == at::kBFloat16) {
        // bf16 written by the kernel (round to nearest even, like the cast; no extra launch).
        at::Tensor yb = at::empty(shape, at::TensorOptions().dtype(at::kBFloat16).device(x.device()));
        gpu::decode_quant_gemv_bf16_cuda(static_cast<const uint16_t*>(x.data_ptr()), M, K, perm, clip_, clip_, w,
                                         yb.data_ptr(), N_, gpu::GemmOutput::kBFloat16, kStream);
        return yb;
      }
      gpu::decode_quant_gemv_cuda(static_cast<const float*>(x.data_ptr()), M, K, perm, clip_, clip_, w, y.data_ptr(),
                                  N_, gpu::GemmOutput::kFloat32, kStream);
      return y;
    }
    ActScratch s = make_act_scratch(M, K4_, K8_, x.device());
    s.args.clip4 = clip_;
    s.args.clip8 = clip_;
    s.args.perm = perm;
    if (hadamard_) {
      s.args.transform = gpu::ActTransform::kHadamard;
      s.args.hadamard = hadamard_params_;
    }
    launch_act_quant(x, s.args);
    if (gpu::decode_gemv_applies(M)) {
      gpu::decode_gemv_cuda(gpu::quantized_activations_view(s.args), w, y.data_ptr(), N_, gpu::GemmOutput::kFloat32,
                            kStream);
    } else {
      gpu::mixed_gemm_cuda(gpu::quantized_activations_view(s.args), w, y.data_ptr(), N_, gpu::GemmOutput::kFloat32,
                           kStream);
    }
  }
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

// ------------------------------------------------------------------ PackedCudaKvCacheQuant

PackedCudaKvCacheQuant::PackedCudaKvCacheQuant(int64_t head_dim, int64_t r_h, float clip)
    : head_dim_(head_dim), r_h_(r_h), clip_(clip) {
  const std::string fn = "PackedCudaKvCacheQuant";
  if (head_dim <= 0 || r_h < 0 || r_h > head_dim) {
    throw ShapeError(fn + ": need 0 <= r_h <= head_dim, got head_dim = " + std::to_string(head_dim) +
                     ", r_h = " + std::to_string(r_h));
  }
  if (head_dim > gpu::kMaxActQuantRow) {
    throw UnsupportedError(fn + ": head_dim " + std::to_string(head_dim) + " above the GPU quantizer's row limit");
  }
  check_clip(clip, fn);
}

at::Tensor PackedCudaKvCacheQuant::apply(const at::Tensor& x) const {
  // x [B, Hkv, T, hd] (any strides; the decoder passes transposed views) -> same shape and dtype.
  const std::string fn = "PackedCudaKvCacheQuant (head_dim " + std::to_string(head_dim_) + ")";
  if (x.dim() < 1 || x.size(-1) != head_dim_) {
    throw ShapeError(fn + ": input " + describe(x) + " has last dimension " + std::to_string(x.dim() ? x.size(-1) : 0));
  }
  if (!x.device().is_cuda()) throw UnsupportedError(fn + ": input " + describe(x) + ": needs a CUDA tensor");
  // As PackedKvCacheQuant: rows in float32 (bf16 is read directly: its conversion is exact).
  const at::Tensor xc = (x.scalar_type() == at::kBFloat16 ? x : x.to(at::kFloat)).contiguous();
  const int64_t rows = xc.numel() / head_dim_;
  at::Tensor out = at::empty(xc.sizes(), at::TensorOptions().dtype(at::kFloat).device(x.device()));
  if (rows > 0) {
    CudaDeviceScope scope(static_cast<int>(x.device().index()));
    ActScratch s = make_act_scratch(rows, head_dim_ - r_h_, r_h_, x.device());
    s.args.clip4 = clip_;
    s.args.clip8 = clip_;
    launch_act_quant(xc, s.args);
    gpu::dequantize_rows_cuda(gpu::quantized_activations_view(s.args), out.data_ptr<float>(), head_dim_, kStream);
  }
  return out.scalar_type() == x.scalar_type() ? out : out.to(x.scalar_type());
}

}  // namespace resq

#endif  // RESQ_HAVE_CUDA
