// GPU tests of the packed runtime (src/runtime/packed_cuda.cpp) against the CPU integer runtime:
// PackedCudaLinear vs PackedCpuLinear bit for bit in fp32 (ragged N/K, o_proj permutation, power-of-two
// online Hadamard, bias, fp32/bf16 input, both GEMM tiles); a block > 1 Hadamard vs the fixed-order
// host reference; PackedCudaKvCacheQuant vs PackedKvCacheQuant bit for bit; a quantized stories260K
// checkpoint evaluated on cuda vs cpu. Device tests GTEST_SKIP() without a device or without a CUDA
// libtorch (at::hasCUDA() false); argument errors that need no device run everywhere.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <vector>

#include "common/quantized_stories.h"
#include "common/test_util.h"
#include "cpu/gemm.h"
#include "cpu/quantize.h"
#include "cuda/kv_dequant.cuh"
#include "resq/common/error.h"
#include "cuda/act_transform.h"
#include "resq/cuda/device.h"
#include "resq/linalg/random.h"
#include "resq/linalg/rotation.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"
#include "resq/runtime/packed_cuda.h"
#include "resq/runtime/packed_model.h"
#include "cuda/cuda_torch_test.h"

namespace resq {
namespace {

using PackedCudaTest = test::CudaTorchTest;

// Random packed linear N x (K4 + K8) (RTN of Gaussian weights, the CPU packer computes row sums).
format::PackedLinear random_packed(int64_t N, int64_t K4, int64_t K8, bool bias, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(N * (K4 + K8))), b;
  for (auto& v : w) v = normal(rng);
  if (bias) {
    b.resize(static_cast<size_t>(N));
    for (auto& v : b) v = 0.1f * normal(rng);
  }
  return cpu::quantize_linear_rtn(w.data(), bias ? b.data() : nullptr, {N, K4, K8});
}

std::vector<int32_t> random_perm(int64_t K, uint32_t seed) {
  std::vector<int32_t> p(static_cast<size_t>(K));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(p.begin(), p.end(), rng);
  return p;
}

// Bitwise equality of two float32 / bfloat16 CPU tensors of the same shape.
void expect_same_bits(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << what;
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  ASSERT_EQ(0, std::memcmp(ac.data_ptr(), bc.data_ptr(), static_cast<size_t>(ac.nbytes()))) << what;
}

TEST_F(PackedCudaTest, LinearEqualsPackedCpuLinearBitForBit) {
  struct C { int64_t N, K4, K8; bool perm, bias; std::vector<int64_t> lead; };
  // lead: the leading dims of x; 2176 x 1152 makes the kernel choose 128x128 tiles on GPUs with
  // <= 153 SMs, the rest run the 32x64 tiles.
  const std::vector<C> cases = {{37, 77, 19, true, true, {3, 5}},    {64, 256, 32, false, true, {1}},
                                {5, 13, 0, false, false, {7}},       {130, 0, 40, true, false, {2, 9}},
                                {200, 448, 64, false, true, {300}},  {1152, 256, 32, true, true, {2176}}};
  uint32_t seed = 1;
  for (const C& c : cases) {
    const int64_t K = c.K4 + c.K8;
    const format::PackedLinear p = random_packed(c.N, c.K4, c.K8, c.bias, seed++);
    const std::vector<int32_t> perm = c.perm ? random_perm(K, seed++) : std::vector<int32_t>{};
    PackedCpuLinear cpu_lin(p, perm, 0.9f, nullptr);
    PackedCudaLinear gpu_lin(p, perm, 0.9f, nullptr);
    EXPECT_EQ(gpu_lin.implementation(), "packed-cuda");
    std::vector<int64_t> shape = c.lead;
    shape.push_back(K);
    at::manual_seed(seed++);
    const at::Tensor x = at::randn(shape) * 2.0;
    const std::string what = "N=" + std::to_string(c.N) + " K4=" + std::to_string(c.K4) + " K8=" + std::to_string(c.K8);
    expect_same_bits(gpu_lin.forward(x.to(cuda())).cpu(), cpu_lin.forward(x), what + " fp32");
    const at::Tensor xb = x.to(at::kBFloat16);
    expect_same_bits(gpu_lin.forward(xb.to(cuda())).cpu(), cpu_lin.forward(xb), what + " bf16");
  }
}

// M <= 16 runs the decode kernel (decode_gemv.cuh): fused quantizer for short rows, act_quant
// (with the online Hadamard) + decode GEMV otherwise; both equal PackedCpuLinear bit for bit.
TEST_F(PackedCudaTest, DecodePathsEqualPackedCpuLinearBitForBit) {
  Rng hrng(11);
  auto h = std::make_shared<const OnlineHadamard>(make_online_hadamard(1024, hrng, /*random_signs=*/true));
  ASSERT_EQ(h->block, 1);
  struct C { int64_t N, K4, K8; bool perm, hadamard; std::vector<int64_t> lead; };
  const std::vector<C> cases = {{4096, 3584, 512, true, false, {1}},       // fused, o_proj-like
                                {300, 3584, 512, false, false, {1, 4}},    // M * K above the fused limit
                                {520, 1024, 0, false, true, {1}},          // Hadamard: act_quant + decode
                                {77, 1024, 0, false, true, {2, 8}},        // M = 16
                                {33, 77, 19, true, false, {16}}};
  uint32_t seed = 70;
  for (const C& c : cases) {
    const int64_t K = c.K4 + c.K8;
    const format::PackedLinear p = random_packed(c.N, c.K4, c.K8, true, seed++);
    const std::vector<int32_t> perm = c.perm ? random_perm(K, seed++) : std::vector<int32_t>{};
    PackedCpuLinear cpu_lin(p, perm, 0.95f, c.hadamard ? h : nullptr);
    PackedCudaLinear gpu_lin(p, perm, 0.95f, c.hadamard ? h : nullptr);
    std::vector<int64_t> shape = c.lead;
    shape.push_back(K);
    at::manual_seed(seed++);
    const at::Tensor x = at::randn(shape) * 2.0;
    const std::string what = "decode N=" + std::to_string(c.N) + " K4=" + std::to_string(c.K4);
    expect_same_bits(gpu_lin.forward(x.to(cuda())).cpu(), cpu_lin.forward(x), what + " fp32");
    const at::Tensor xb = x.to(at::kBFloat16);
    expect_same_bits(gpu_lin.forward(xb.to(cuda())).cpu(), cpu_lin.forward(xb), what + " bf16");
  }
}

TEST_F(PackedCudaTest, FusedHadamardMatchesCpu) {
  // Power of two: the GPU butterfly + scale equals apply_online_hadamard(float), so the whole linear
  // equals PackedCpuLinear bit for bit.
  {
    Rng rng(7);
    auto h = std::make_shared<const OnlineHadamard>(make_online_hadamard(256, rng, /*random_signs=*/true));
    ASSERT_EQ(h->block, 1);
    const format::PackedLinear p = random_packed(48, 256, 0, false, 3);
    PackedCpuLinear cpu_lin(p, {}, 1.0f, h);
    PackedCudaLinear gpu_lin(p, {}, 1.0f, h);
    at::manual_seed(4);
    const at::Tensor x = at::randn({37, 256});
    expect_same_bits(gpu_lin.forward(x.to(cuda())).cpu(), cpu_lin.forward(x), "pow2 Hadamard");
  }
  // Block > 1: the GPU mixes blocks in a fixed order, the CPU with an Eigen GEMM; compare with the
  // sequential host run of the GPU's order, then the CPU quantizer and GEMM. n = 192 = 12 x 16, and
  // through PackedCudaLinear the intermediate sizes of Llama-2 (11008 = 344 x 32, the block the
  // first GPU run refused) and Qwen2.5-7B (18944 = 148 x 128, the largest shared-memory plan).
  for (const int64_t n : {int64_t{192}, int64_t{11008}, int64_t{18944}}) {
    const int64_t M = 21, N = 33;
    Rng rng(9);
    const OnlineHadamard t = make_online_hadamard(n, rng, /*random_signs=*/true);
    ASSERT_GT(t.block, 1);
    const gpu::HadamardRowHost row = gpu::make_hadamard_row_host(t.n, t.pow2, t.block, t.block_matrix, t.signs);
    const format::PackedLinear p = random_packed(N, n, 0, true, 5);
    PackedCudaLinear gpu_lin(p, {}, 1.0f, std::make_shared<const OnlineHadamard>(t));
    at::manual_seed(6);
    const at::Tensor x = at::randn({M, n});
    std::vector<float> z(x.data_ptr<float>(), x.data_ptr<float>() + M * n);
    for (int64_t m = 0; m < M; ++m) gpu::hadamard_row_reference(row.view(), z.data() + m * n);
    const cpu::QuantizedActivations q = cpu::quantize_activations(z.data(), M, n, 0, 1.0f, 1.0f);
    at::Tensor want = at::empty({M, N});
    cpu::gemm_w4a4_w8a8_reference(q.view(), p.view(), want.data_ptr<float>());
    expect_same_bits(gpu_lin.forward(x.to(cuda())).cpu(), want, "block Hadamard, n = " + std::to_string(n));
  }
}

TEST_F(PackedCudaTest, LinearRejectsBadInputs) {
  const format::PackedLinear p = random_packed(8, 24, 8, false, 2);
  PackedCudaLinear lin(p, {}, 1.0f, nullptr);
  EXPECT_THROW(lin.forward(at::randn({2, 32})), UnsupportedError);                          // CPU tensor
  EXPECT_THROW(lin.forward(at::randn({2, 31}, at::TensorOptions().device(cuda()))), ShapeError);  // K
  EXPECT_THROW(lin.forward(at::randn({2, 32}, at::TensorOptions().device(cuda()).dtype(at::kDouble))), UnsupportedError);
  EXPECT_THROW(lin.forward(at::randn({32, 4}, at::TensorOptions().device(cuda())).t()), ShapeError);  // not contiguous
  EXPECT_EQ(lin.forward(at::randn({0, 32}, at::TensorOptions().device(cuda()))).sizes(), (std::vector<int64_t>{0, 8}));
}

TEST_F(PackedCudaTest, KvCacheQuantEqualsPackedKvCacheQuantBitForBit) {
  for (const auto& [hd, r_h] : std::vector<std::pair<int64_t, int64_t>>{{16, 0}, {16, 2}, {16, 16}, {128, 16}, {13, 3}}) {
    at::manual_seed(static_cast<uint64_t>(hd + r_h));
    PackedKvCacheQuant cpu_cache(hd, r_h, 0.95f);
    PackedCudaKvCacheQuant gpu_cache(hd, r_h, 0.95f);
    const std::string what = "hd " + std::to_string(hd) + " r_h " + std::to_string(r_h);
    // Contiguous, and a transposed view as the decoder passes (v = view(B, T, Hkv, hd).transpose(1, 2)).
    const at::Tensor k = at::randn({2, 3, 11, hd}) * 3.0;
    const at::Tensor v = (at::randn({2, 11, 3, hd}) * 3.0).transpose(1, 2);
    expect_same_bits(gpu_cache.apply(k.to(cuda())).cpu(), cpu_cache.apply(k), what + " contiguous");
    expect_same_bits(gpu_cache.apply(v.to(cuda())).cpu(), cpu_cache.apply(v), what + " transposed");
    const at::Tensor kb = k.to(at::kBFloat16);
    expect_same_bits(gpu_cache.apply(kb.to(cuda())).cpu(), cpu_cache.apply(kb), what + " bf16");
  }
}

// A quantized stories260K checkpoint (the pipeline, shared with the runtime tests).
std::string quantized_stories(const std::string& recipe) { return test::quantized_stories(recipe, /*seed=*/1, 8, 128); }

TEST_F(PackedCudaTest, StoriesLogitsOnCudaMatchCpu) {
  // resq-rtn: 4/8-bit linears, o_proj permutation, fused Hadamard before down_proj (n = 172 =
  // 4 x 43: block > 1, so not bit-exact with the CPU), 4/8-bit KV cache; rtn-w4a4kv4: plain 4-bit.
  for (const std::string recipe : {"resq-rtn", "rtn-w4a4kv4"}) {
    const std::string dir = quantized_stories(recipe);
    c10::NoGradGuard guard;
    LoadOptions on_cuda;
    on_cuda.device = "cuda";
    Decoder g = load_model_for_eval(dir, on_cuda);
    Decoder c = load_model_for_eval(dir, LoadOptions{});
    EXPECT_EQ(g.layers()[0].q->implementation(), "packed-cuda");
    EXPECT_EQ(g.layers()[0].down->implementation(), "packed-cuda");
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < 96; ++t) ids.push_back((t * 37 + 11) % 512);
    const at::Tensor x = at::tensor(at::ArrayRef<int64_t>(ids), at::TensorOptions().dtype(at::kLong)).view({2, 48});
    const at::Tensor a = g.forward(x).cpu(), b = c.forward(x);
    // The integer linears and the KV quantizer agree bit for bit; torch's CUDA and CPU kernels for
    // norms, RoPE, attention and lm_head sum in other orders, and the Hadamard block mix differs to
    // rounding, which can flip a later activation rounding: same bound as packed vs simulated.
    const double rel = (a - b).abs().max().item<double>() / std::max(1e-12, b.abs().max().item<double>());
    EXPECT_LT(rel, 2e-2) << recipe;
    EXPECT_GT(at::argmax(a, -1).eq(at::argmax(b, -1)).to(at::kFloat).mean().item<double>(), 0.95) << recipe;
  }
}

// ---------------------------------------------------------------- argument errors, no device needed

TEST(PackedCudaArgs, ConstructorsRejectBadArgumentsBeforeAnyCudaCall) {
  const format::PackedLinear p = random_packed(4, 12, 4, false, 1);
  EXPECT_THROW(PackedCudaLinear(p, {0, 1}, 1.0f, nullptr), ShapeError);  // perm size
  std::vector<int32_t> bad(16);
  std::iota(bad.begin(), bad.end(), 0);
  bad[3] = 16;
  EXPECT_THROW(PackedCudaLinear(p, bad, 1.0f, nullptr), ShapeError);  // perm entry
  EXPECT_THROW(PackedCudaLinear(p, {}, 0.0f, nullptr), ConfigError);  // clip
  Rng rng(1);
  auto h8 = std::make_shared<const OnlineHadamard>(make_online_hadamard(8, rng, true));
  EXPECT_THROW(PackedCudaLinear(p, {}, 1.0f, h8), ShapeError);  // Hadamard size != K
  auto h16 = std::make_shared<const OnlineHadamard>(make_online_hadamard(16, rng, true));
  std::vector<int32_t> perm(16);
  std::iota(perm.begin(), perm.end(), 0);
  EXPECT_THROW(PackedCudaLinear(p, perm, 1.0f, h16), UnsupportedError);  // perm + Hadamard
  EXPECT_THROW(PackedCudaKvCacheQuant(16, 17, 1.0f), ShapeError);
  EXPECT_THROW(PackedCudaKvCacheQuant(16, 2, 1.5f), ConfigError);
  PackedCudaKvCacheQuant kv(16, 2, 1.0f);
  EXPECT_THROW(kv.apply(at::randn({2, 3, 4, 15})), ShapeError);
  EXPECT_THROW(kv.apply(at::randn({2, 3, 4, 16})), UnsupportedError);  // CPU tensor
}

TEST(PackedCudaArgs, DequantizeRowsRejectsBadArguments) {
  gpu::GpuActivationsView v;
  v.M = 2;
  v.K4 = 4;
  v.K8 = 4;
  float out[16];
  EXPECT_THROW(gpu::dequantize_rows_cuda(v, out, 7, nullptr), ShapeError);    // ldo < K
  EXPECT_THROW(gpu::dequantize_rows_cuda(v, out, 8, nullptr), ShapeError);    // null rows
  EXPECT_THROW(gpu::dequantize_rows_cuda(v, nullptr, 8, nullptr), ShapeError);  // null out
  v.M = 0;
  EXPECT_NO_THROW(gpu::dequantize_rows_cuda(v, nullptr, 8, nullptr));  // nothing to do
}

TEST(PackedCudaArgs, LoadingOnCudaWithoutAUsableGpuSaysWhy) {
  const std::string why = packed_cuda_unavailable_reason();
  if (why.empty()) GTEST_SKIP() << "CUDA is usable here (covered by StoriesLogitsOnCudaMatchCpu)";
  LoadOptions on_cuda;
  on_cuda.device = "cuda";
  try {
    load_model_for_eval(quantized_stories("rtn-w4a4kv4"), on_cuda);
    FAIL() << "expected UnsupportedError";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
}

// Device half of the row dequantization: the kernel equals the host reference bit for bit.
TEST_F(PackedCudaTest, DequantizeRowsEqualsHostReference) {
  for (const auto& [K4, K8] : std::vector<std::pair<int64_t, int64_t>>{{112, 16}, {13, 3}, {0, 8}, {7, 0}}) {
    const int64_t M = 45, K = K4 + K8, ldo = K + 2;
    std::mt19937 rng(static_cast<uint32_t>(K4 * 31 + K8));
    std::normal_distribution<float> normal(0.0f, 1.5f);
    std::vector<float> x(static_cast<size_t>(M * K));
    for (auto& v : x) v = normal(rng);
    const cpu::QuantizedActivations q = cpu::quantize_activations(x.data(), M, K4, K8, 1.0f, 1.0f);
    const gpu::GpuActivationsHost h = gpu::restride_activations_for_gpu(q.view(), 0, 0, 0xCD);
    std::vector<float> want(static_cast<size_t>(M * ldo), -3.0f);
    gpu::dequantize_activations_reference(h.host_view(), want.data(), ldo);
    gpu::DeviceBuffer<uint8_t> xq4(h.xq4), xq8(h.xq8);
    gpu::DeviceBuffer<float> sx4(h.sx4), sx8(h.sx8), out(std::vector<float>(want.size(), -3.0f));
    gpu::DeviceBuffer<int32_t> zx4(h.zx4), zx8(h.zx8);
    gpu::GpuActivationsView v = h.host_view();
    v.xq4 = K4 ? xq4.get() : nullptr;
    v.xq8 = K8 ? xq8.get() : nullptr;
    v.sx4 = K4 ? sx4.get() : nullptr;
    v.zx4 = K4 ? zx4.get() : nullptr;
    v.sx8 = K8 ? sx8.get() : nullptr;
    v.zx8 = K8 ? zx8.get() : nullptr;
    gpu::dequantize_rows_cuda(v, out.get(), ldo, nullptr);
    RESQ_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = out.download();
    ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float))) << "K4 " << K4 << " K8 " << K8;
  }
}

}  // namespace
}  // namespace resq
