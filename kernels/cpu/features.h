// CPU feature detection and the choice of integer-kernel implementation (scalar reference, AVX2,
// AVX-512 VNNI), made at run time so the library builds without -march flags.
#pragma once

#include <string>

namespace resq::cpu {

// Implementations of the packed integer kernels. kAuto picks RESQ_CPU_KERNEL from the environment
// when set (ref|avx2|vnni|auto), else the fastest one the CPU supports.
enum class CpuKernel { kAuto, kReference, kAvx2, kVnni };

// What the running CPU supports (as reported by __builtin_cpu_supports).
struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vnni = false;
};

CpuFeatures cpu_features();

// E.g. "avx2 fma avx512f avx512bw avx512vnni" (space-separated, only supported features; "none").
std::string cpu_features_string();

// "auto", "ref", "avx2", "vnni".
const char* cpu_kernel_name(CpuKernel kernel);

// Parses "ref" | "avx2" | "vnni" | "auto"; throws resq::ConfigError naming the value otherwise.
CpuKernel parse_cpu_kernel(const std::string& name);

// True when this CPU can run the implementation (kAuto and kReference always can).
bool cpu_kernel_available(CpuKernel kernel);

// Resolves kAuto (environment variable RESQ_CPU_KERNEL, else the best available) to a concrete
// implementation. Throws resq::UnsupportedError when the requested (or environment-requested)
// implementation needs an instruction set this CPU lacks, and resq::ConfigError for a malformed
// RESQ_CPU_KERNEL value.
CpuKernel resolve_cpu_kernel(CpuKernel requested);

}  // namespace resq::cpu
