// The GPU packed runtime: PackedCudaLinear (act_quant + mixed_gemm CUDA kernels on the same packed
// weights as PackedCpuLinear) and PackedCudaKvCacheQuant (the KV-cache fake quant on CUDA tensors),
// thin torch adapters over the plain-pointer launchers of kernels/cuda. Only with RESQ_HAVE_CUDA.
#pragma once

#if defined(RESQ_HAVE_CUDA)

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "resq/format/packed_linear.h"
#include "cuda/act_transform.h"
#include "resq/cuda/device.h"
#include "cuda/device_linear.h"
#include "cuda/gpu_layout.h"
#include "resq/linalg/rotation.h"
#include "resq/model/decoder.h"
#include "resq/model/linear.h"
#include "resq/runtime/backend.h"  // packed_cuda_unavailable_reason: whether these can run here

namespace resq {

// Streams: every kernel runs on the legacy default stream (0). The torch ops around the linears
// (norms, attention, residual adds) run on torch's current stream, and the API to query it
// (c10::cuda::getCurrentCUDAStream) lives in c10_cuda, whose headers are not part of a CPU
// libtorch; stream 0 is torch's default current stream and the legacy default stream orders
// itself against every blocking stream, so the two stay ordered without a query. Code that sets
// another current stream with cudaStreamNonBlocking semantics must synchronize around these calls.

// A packed linear on the CUDA integer kernels, bit-identical (fp32) to PackedCpuLinear on the same
// packed weights except for a fused Hadamard with block > 1 (see below):
//   x [..., K] CUDA, float32 or bfloat16, contiguous -> gather columns by perm (o_proj) or online
//   Hadamard (down_proj) fused into the per-token quantizer (act_quant_cuda) -> W4A4 + W8A8 GEMM
//   with the fp32 epilogue and bias (mixed_gemm_cuda) -> y [..., N] float32, returned in x's dtype.
// The weights are re-strided once (format::restride to 16-byte rows) and uploaded to the device
// that is current at construction; forward needs x on that device. A Hadamard whose block is > 1 mixes blocks in a
// fixed order on the GPU (act_transform.h) while the CPU uses an Eigen GEMM: equal to rounding only.
class PackedCudaLinear : public Linear {
 public:
  // packed: N x (K4 + K8) packed weights with row sums (host); perm: [K] packed column j = input
  // column perm[j], or empty for the identity; clip: activation clip ratio of both parts in (0, 1];
  // input_hadamard: applied to every token before quantization, or null. perm and a Hadamard
  // together are rejected (UnsupportedError: the kernel gathers before it transforms, the CPU
  // transforms before it gathers; no checkpoint site has both).
  PackedCudaLinear(const format::PackedLinear& packed, std::vector<int32_t> perm, float clip,
                   std::shared_ptr<const OnlineHadamard> input_hadamard);
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return K4_ + K8_; }
  int64_t out_features() const override { return N_; }
  std::string implementation() const override { return "packed-cuda"; }
  int device_index() const { return device_; }

 private:
  int64_t N_ = 0, K4_ = 0, K8_ = 0;
  float clip_ = 1.0f;
  int device_ = 0;  // CUDA device holding the buffers
  gpu::DevicePackedLinear weights_;            // the packed linear in the GPU layout
  gpu::DeviceBuffer<int32_t> perm_;            // [K] or empty
  bool hadamard_ = false;
  gpu::HadamardRowParams hadamard_params_;     // device pointers into signs_ / mix_
  gpu::DeviceBuffer<float> signs_, mix_;       // [n], [block][block] (empty when block == 1)
};

// The quantized KV cache of the GPU runtime as a fake quant: K or V [B, Hkv, T, hd] on CUDA (any
// float dtype, any strides) -> every (b, h, t) row quantized like PackedKvCacheQuant (the first
// hd - r_h channels 4-bit, the last r_h 8-bit, per-row asymmetric, act_quant_cuda) and read back
// dequantized (dequantize_rows_cuda), same shape and dtype. Bit-identical to PackedKvCacheQuant.
class PackedCudaKvCacheQuant : public TensorTransform {
 public:
  PackedCudaKvCacheQuant(int64_t head_dim, int64_t r_h, float clip);
  at::Tensor apply(const at::Tensor& x) const override;
  int64_t head_dim() const { return head_dim_; }
  int64_t r_h() const { return r_h_; }
  float clip() const { return clip_; }

 private:
  int64_t head_dim_;
  int64_t r_h_;
  float clip_;
};

}  // namespace resq

#endif  // RESQ_HAVE_CUDA
