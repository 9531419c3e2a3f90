// Helpers shared by the CPU kernel tests.
#pragma once

#include <gtest/gtest.h>

#include "cpu/features.h"

namespace resq::test {

// Base fixture of tests parameterized by ISA: skips (saying why) an ISA this CPU lacks.
class IsaTest : public ::testing::TestWithParam<resq::cpu::CpuKernel> {
 protected:
  void SetUp() override {
    if (!resq::cpu::cpu_kernel_available(GetParam())) {
      GTEST_SKIP() << "this CPU lacks the instructions of kernel '"
                   << resq::cpu::cpu_kernel_name(GetParam()) << "' (has: "
                   << resq::cpu::cpu_features_string() << ")";
    }
  }
};

}  // namespace resq::test
