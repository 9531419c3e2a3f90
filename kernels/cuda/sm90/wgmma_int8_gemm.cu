// The int32 GEMM of the sm_90a prefill path on CUTLASS 3.x: TMA loads into a 128-byte swizzled
// shared-memory ring, wgmma u8·s8 -> s32 from shared memory (SS), warp-specialized cooperative kernel
// (one producer warpgroup issuing TMA, two consumer warpgroups on a 128x128 tile), int32 TMA-store
// epilogue. The only resq file that includes CUTLASS; compiled for sm_90a only (kernels/cuda/CMakeLists.txt).
#include "cuda/sm90/wgmma_int8_gemm.h"

// Include order of CUTLASS's own sm90 examples (its headers rely on it for unqualified names).
#include "cutlass/cutlass.h"
#include "cute/tensor.hpp"
#include "cutlass/tensor_ref.h"
#include "cutlass/epilogue/collective/default_epilogue.hpp"
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace resq::gpu::sm90 {
namespace {

using namespace cute;

using ElementA = uint8_t;  // activations: uint4 widened / uint8, zero point in the epilogue
using ElementB = int8_t;   // weights: int4 widened / int8
using ElementAcc = int32_t;
using LayoutA = cutlass::layout::RowMajor;     // A [M][K], K contiguous
using LayoutB = cutlass::layout::ColumnMajor;  // B as K x N with K contiguous = W [N][K] (the "TN" int8 layout)
using LayoutD = cutlass::layout::RowMajor;     // D [M][N]
constexpr int kAlignAB = 16;                   // elements (16 bytes, TMA)
constexpr int kAlignD = 4;                     // int32 (16 bytes)

// 128x128 output tile, 128 bytes of K per stage (= one 128-byte swizzle atom), no cluster multicast.
using TileShape = Shape<_128, _128, _128>;
using ClusterShape = Shape<_1, _1, _1>;

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementAcc,  //
    int32_t, LayoutD, kAlignD,                                                 // C (beta = 0: not read)
    int32_t, LayoutD, kAlignD,                                                 // D
    cutlass::epilogue::TmaWarpSpecializedCooperative>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, kAlignAB, ElementB, LayoutB, kAlignAB,
    ElementAcc, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                        CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

}  // namespace

const char* int8_gemm_s32(const uint8_t* A, int64_t lda, const int8_t* B, int64_t ldb, int32_t* D, int64_t ldd,
                          int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  StrideA sa{};
  StrideB sb{};
  StrideD sd{};
  cute::get<0>(sa) = lda;
  cute::get<2>(sa) = lda * M;
  cute::get<0>(sb) = ldb;
  cute::get<2>(sb) = ldb * N;
  cute::get<0>(sd) = ldd;
  cute::get<2>(sd) = ldd * M;
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                {static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1},
                                {A, sa, B, sb},
                                {{1, 0}, D, sd, D, sd}};
  int device = 0;
  cudaGetDevice(&device);
  args.hw_info.device_id = device;
  args.hw_info.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS can_implement refused the shape/strides";
  if (Gemm::get_workspace_size(args) != 0) return "CUTLASS kernel unexpectedly needs a workspace";
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream) != cutlass::Status::kSuccess) return "CUTLASS kernel launch failed";
  return "";
}

int int8_gemm_smem_bytes() { return static_cast<int>(sizeof(typename GemmKernel::SharedStorage)); }
int int8_gemm_threads() { return static_cast<int>(GemmKernel::MaxThreadsPerBlock); }

}  // namespace resq::gpu::sm90

// CUTLASS's TMA descriptors call the driver's cuTensorMapEncodeTiled directly. Linking libcuda would
// make every resq binary fail to load on machines without an NVIDIA driver (CI, this build machine),
// so the symbol is defined here and forwards to the driver's entry point through the runtime (which
// loads libcuda only when a device is used). Debian's CUTLASS 3.4.1 has no switch for this.
extern "C" CUresult CUDAAPI cuTensorMapEncodeTiled(CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType,
                                                   cuuint32_t tensorRank, void* globalAddress,
                                                   const cuuint64_t* globalDim, const cuuint64_t* globalStrides,
                                                   const cuuint32_t* boxDim, const cuuint32_t* elementStrides,
                                                   CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                                   CUtensorMapL2promotion l2Promotion,
                                                   CUtensorMapFloatOOBfill oobFill) {
  using Fn = CUresult(CUDAAPI*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
  static Fn fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      p = nullptr;
    }
    return reinterpret_cast<Fn>(p);
  }();
  if (fn == nullptr) return CUDA_ERROR_NOT_SUPPORTED;
  return fn(tensorMap, tensorDataType, tensorRank, globalAddress, globalDim, globalStrides, boxDim, elementStrides,
            interleave, swizzle, l2Promotion, oobFill);
}
