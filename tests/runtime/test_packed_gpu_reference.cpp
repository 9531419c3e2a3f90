// Host check of the GPU KV-cache fake quant's arithmetic (no GPU needed): PackedKvCacheQuant equals,
// bit for bit, the composition PackedCudaKvCacheQuant runs on the device — the CPU quantizer's rows
// (which act_quant_cuda reproduces byte for byte, tests/cuda) in GPU layout, then the row
// dequantization reference of gpu_layout.h (which dequantize_rows_cuda runs per element).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "cpu/quantize.h"
#include "cuda/gpu_layout.h"
#include "resq/runtime/packed_model.h"

namespace resq {
namespace {

TEST(PackedKvCacheQuantGpuReference, HostCompositionOfTheGpuPathIsBitExact) {
  for (const auto& [hd, r_h] : std::vector<std::pair<int64_t, int64_t>>{{16, 0}, {16, 2}, {16, 16}, {128, 16}, {13, 3}}) {
    at::manual_seed(static_cast<uint64_t>(hd * 100 + r_h));
    at::Tensor k = at::randn({2, 3, 11, hd}) * 3.0;
    const float clip = 0.95f;
    PackedKvCacheQuant cpu_cache(hd, r_h, clip);
    const at::Tensor want = cpu_cache.apply(k).contiguous();
    const at::Tensor rows = k.reshape({-1, hd}).contiguous();
    const int64_t M = rows.size(0);
    const cpu::QuantizedActivations q = cpu::quantize_activations(rows.data_ptr<float>(), M, hd - r_h, r_h, clip, clip);
    const gpu::GpuActivationsHost g = gpu::restride_activations_for_gpu(q.view(), 0, 0, 0x5A);
    std::vector<float> got(static_cast<size_t>(M * hd));
    gpu::dequantize_activations_reference(g.host_view(), got.data(), hd);
    EXPECT_EQ(0, std::memcmp(got.data(), want.data_ptr<float>(), got.size() * sizeof(float))) << "hd " << hd << " r_h " << r_h;
  }
}

}  // namespace
}  // namespace resq
