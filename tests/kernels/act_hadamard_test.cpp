// Host tests of the CUDA activation quantizer's online-Hadamard block mix (kernels/cuda/act_transform.h,
// kernels/cuda/act_quant.cu): the kernel's shared-memory plan (plan_hadamard_mix) for the
// (pow2, block) of every model shape, and the host emulation of the kernel's exact thread / group
// decomposition, which must equal the sequential reference hadamard_row_reference bit for bit.
// No GPU needed. The (pow2, block) pairs here are worked out by hand from hadamard_plan's rule
// (largest pow2 whose block n / pow2 has a Paley construction, else odd part + random orthogonal);
// tests/cuda/act_hadamard_shapes_test.cpp checks that make_online_hadamard picks the same.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "resq/common/error.h"
#include "cuda/act_transform.h"

namespace {

using namespace resq::gpu;  // NOLINT

struct MixShape {
  const char* what;
  int64_t n, pow2, block;
};

// Every intermediate size of the make-model shapes and supported families.
const MixShape kShapes[] = {
    {"llama-2-7b 11008 = 32 x 344 (Paley I, q = 343)", 11008, 32, 344},
    {"llama-3-8b / mistral 14336 = 512 x 28 (Paley I, q = 27)", 14336, 512, 28},
    {"qwen2.5-7b 18944 = 128 x 148 (Paley II, q = 73)", 18944, 128, 148},
    {"qwen2.5-0.5b 4864 = 64 x 76 (Paley II, q = 37)", 4864, 64, 76},
    {"llama-3.2-1b 8192 = 8192 x 1", 8192, 8192, 1},
    {"stories260K / tiny-gqa-tied 172 = 4 x 43 (random orthogonal)", 172, 4, 43},
    {"tiny 352 = 8 x 44 (Paley I, q = 43)", 352, 8, 44},
    {"tiny-qwen2 160 = 8 x 20 (Paley I, q = 19)", 160, 8, 20},
    {"tiny-llama3 192 = 16 x 12 (Paley I, q = 11)", 192, 16, 12},
};

// cudaDevAttrMaxSharedMemoryPerBlockOptin of the compiled architectures (CUDA programming guide,
// compute capability table), minus the kernel's static scratch: the budget the launcher passes.
struct Arch {
  const char* name;
  int64_t optin_bytes;
};
const Arch kArchs[] = {{"sm_80", 163 * 1024}, {"sm_86", 99 * 1024}, {"sm_89", 99 * 1024}, {"sm_90a", 227 * 1024}};

int64_t budget(const Arch& a) { return a.optin_bytes - kActQuantStaticSmemBytes; }

// A row, signs and an arbitrary (not orthogonal: bit-exactness does not need it) fp32 mix.
struct MixInput {
  HadamardRowHost host;
  std::vector<float> row;
};

MixInput make_input(const MixShape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> B(static_cast<size_t>(s.block * s.block));
  for (auto& v : B) v = normal(rng) / std::sqrt(static_cast<double>(s.block));
  std::vector<float> signs(static_cast<size_t>(s.n));
  for (auto& v : signs) v = rng() % 2 ? 1.0f : -1.0f;
  MixInput in{make_hadamard_row_host(s.n, s.pow2, s.block, B, signs), std::vector<float>(static_cast<size_t>(s.n))};
  for (auto& v : in.row) v = static_cast<float>(normal(rng)) * (rng() % 29 == 0 ? 40.0f : 1.0f);
  return in;
}

// Groups the plan picks for the architectures, plus the extremes 1 and pow2.
std::set<int64_t> groups_to_test(const MixShape& s) {
  std::set<int64_t> groups;
  if (s.block == 1) return {0};
  groups.insert(1);
  groups.insert(s.pow2);
  for (const Arch& a : kArchs) groups.insert(plan_hadamard_mix(s.n, s.pow2, s.block, budget(a), "").group);
  return groups;
}

TEST(CudaHadamardMix, EmulatedKernelEqualsReferenceBitForBit) {
  uint32_t seed = 100;
  for (const MixShape& s : kShapes) {
    const MixInput in = make_input(s, seed++);
    std::vector<float> want = in.row;
    hadamard_row_reference(in.host.view(), want.data());
    for (int64_t group : groups_to_test(s)) {
      for (bool reverse : {false, true}) {
        std::vector<float> got = in.row;
        emulate_hadamard_row_kernel(in.host.view(), group, kActQuantThreads, reverse, got.data());
        size_t first_bad = got.size();
        for (size_t i = 0; i < got.size() && first_bad == got.size(); ++i) {
          if (std::memcmp(&got[i], &want[i], 4) != 0) first_bad = i;
        }
        ASSERT_EQ(first_bad, got.size())
            << s.what << ", group " << group << (reverse ? ", threads in reverse order" : "")
            << ": element " << first_bad << " is " << got[first_bad % got.size()] << ", reference "
            << want[first_bad % want.size()];
      }
    }
  }
}

// The decomposition does not depend on the thread count either (a warp, an odd count, more
// threads than outputs of a group).
TEST(CudaHadamardMix, EmulationIsIndependentOfTheThreadCount) {
  const MixShape s = kShapes[5];  // 172 = 4 x 43
  const MixInput in = make_input(s, 7);
  std::vector<float> want = in.row;
  hadamard_row_reference(in.host.view(), want.data());
  for (int64_t threads : {int64_t{1}, int64_t{32}, int64_t{33}, int64_t{1024}}) {
    for (int64_t group : {int64_t{1}, int64_t{2}, int64_t{4}}) {
      std::vector<float> got = in.row;
      emulate_hadamard_row_kernel(in.host.view(), group, threads, true, got.data());
      ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0) << threads << " threads, group " << group;
    }
  }
}

// Within each group the stage and mix phases touch every element of the group's columns exactly
// once, and over all groups every element of the row exactly once.
TEST(CudaHadamardMix, GroupIndexCoversTheRowOnce) {
  for (const MixShape& s : kShapes) {
    if (s.block == 1) continue;
    for (int64_t group : groups_to_test(s)) {
      std::vector<int> hits(static_cast<size_t>(s.n), 0);
      for (int64_t a0 = 0; a0 < s.pow2; a0 += group) {
        for (int64_t t = 0; t < s.block * group; ++t) {
          const int64_t i = hadamard_group_index(t, group, s.pow2, a0);
          ASSERT_TRUE(i >= 0 && i < s.n) << s.what << " group " << group;
          ASSERT_EQ(i / s.pow2, t / group) << s.what;       // block row d (or b)
          ASSERT_EQ(i % s.pow2, a0 + t % group) << s.what;  // column of the group
          ++hits[static_cast<size_t>(i)];
        }
      }
      for (int h : hits) ASSERT_EQ(h, 1) << s.what << " group " << group;
    }
  }
}

// Expected plans, worked out by hand: the largest power of two group <= pow2 with
// block * group <= 8192 floats and (n + block * group) * 4 bytes within the budget.
TEST(CudaHadamardMix, PlanPicksTheLargestGroupThatFits) {
  struct Want {
    int64_t n, pow2, block, group, smem;
  };
  const Want wants[] = {
      {11008, 32, 344, 16, (11008 + 344 * 16) * 4},   // 344 * 32 = 11008 > 8192
      {14336, 512, 28, 256, (14336 + 28 * 256) * 4},  // 28 * 512 = 14336 > 8192
      {18944, 128, 148, 32, (18944 + 148 * 32) * 4},  // 148 * 64 = 9472 > 8192
      {4864, 64, 76, 64, (4864 + 76 * 64) * 4},       // the whole row in one group
      {8192, 8192, 1, 0, 8192 * 4},                   // no block mix
      {172, 4, 43, 4, (172 + 172) * 4},
  };
  for (const Want& w : wants) {
    for (const Arch& a : kArchs) {
      const HadamardMixPlan p = plan_hadamard_mix(w.n, w.pow2, w.block, budget(a), "");
      EXPECT_EQ(p.group, w.group) << w.n << " on " << a.name;
      EXPECT_EQ(p.stage_floats, w.block > 1 ? w.block * w.group : 0) << w.n << " on " << a.name;
      EXPECT_EQ(p.smem_bytes, w.smem) << w.n << " on " << a.name;
    }
  }
  // 18944 on sm_86 / sm_89: 94,720 of 101,248 bytes.
  EXPECT_LE((18944 + 148 * 32) * 4, 99 * 1024 - kActQuantStaticSmemBytes);
  // A tight budget shrinks the group: 18944 + 148 * g floats within 80,000 bytes -> g = 4.
  EXPECT_EQ(plan_hadamard_mix(18944, 128, 148, 80000, "").group, 4);
  // Exactly the row and one column: group 1.
  EXPECT_EQ(plan_hadamard_mix(11008, 32, 344, (11008 + 344) * 4, "").group, 1);
}

TEST(CudaHadamardMix, PlanFitsEveryArchitectureForEveryShape) {
  for (const MixShape& s : kShapes) {
    for (const Arch& a : kArchs) {
      const HadamardMixPlan p = plan_hadamard_mix(s.n, s.pow2, s.block, budget(a), "");
      EXPECT_LE(p.smem_bytes, budget(a)) << s.what << " on " << a.name;
      if (s.block == 1) {
        EXPECT_EQ(p.group, 0);
        continue;
      }
      EXPECT_GE(p.group, 1) << s.what;
      EXPECT_EQ(p.group & (p.group - 1), 0) << s.what;
      EXPECT_EQ(s.pow2 % p.group, 0) << s.what;
      EXPECT_LE(p.stage_floats, kHadamardStageCapFloats) << s.what;
      // Enough outputs per group to give every thread at least one.
      EXPECT_GE(s.block * p.group, std::min<int64_t>(s.n, kActQuantThreads)) << s.what;
    }
  }
}

TEST(CudaHadamardMix, PlanRefusesARowThatDoesNotFitAndNamesTheSizes) {
  try {
    plan_hadamard_mix(18944, 128, 148, (18944 + 148) * 4 - 1, "act_quant_cuda: ");
    FAIL() << "expected UnsupportedError";
  } catch (const resq::UnsupportedError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("act_quant_cuda: "), std::string::npos) << m;
    EXPECT_NE(m.find("n = 18944"), std::string::npos) << m;
    EXPECT_NE(m.find("pow2 128 x block 148"), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string((18944 + 148) * 4)), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string((18944 + 148) * 4 - 1)), std::string::npos) << m;
  }
  EXPECT_THROW(plan_hadamard_mix(8192, 8192, 1, 8192 * 4 - 4, ""), resq::UnsupportedError);
  EXPECT_NO_THROW(plan_hadamard_mix(8192, 8192, 1, 8192 * 4, ""));
}

TEST(CudaHadamardMix, RowCheckRejectsInconsistentShapes) {
  const MixInput in = make_input(kShapes[3], 3);  // 4864 = 64 x 76
  HadamardRowParams p = in.host.view();
  EXPECT_NO_THROW(check_hadamard_row(p, 4864, ""));
  EXPECT_THROW(check_hadamard_row(p, 4800, ""), resq::ShapeError);  // n != K
  HadamardRowParams q = p;
  q.pow2 = 38;  // 38 x 128 = 4864, but 38 is not a power of two
  q.block = 128;
  EXPECT_THROW(check_hadamard_row(q, 4864, ""), resq::ShapeError);
  q = p;
  q.block = 75;  // pow2 * block != n
  EXPECT_THROW(check_hadamard_row(q, 4864, ""), resq::ShapeError);
  q = p;
  q.mix = nullptr;
  EXPECT_THROW(check_hadamard_row(q, 4864, ""), resq::ShapeError);
}

}  // namespace
