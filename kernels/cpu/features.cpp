// Run-time CPU feature detection and RESQ_CPU_KERNEL handling for the packed integer kernels.
#include "cpu/features.h"

#include <cstdlib>

#include "resq/common/error.h"

namespace resq::cpu {

CpuFeatures cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
#endif
  return f;
}

std::string cpu_features_string() {
  const CpuFeatures f = cpu_features();
  std::string s;
  auto add = [&s](bool has, const char* name) {
    if (!has) return;
    if (!s.empty()) s += ' ';
    s += name;
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vnni, "avx512vnni");
  return s.empty() ? "none" : s;
}

const char* cpu_kernel_name(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::kAuto: return "auto";
    case CpuKernel::kReference: return "ref";
    case CpuKernel::kAvx2: return "avx2";
    case CpuKernel::kVnni: return "vnni";
  }
  return "?";
}

CpuKernel parse_cpu_kernel(const std::string& name) {
  if (name == "auto") return CpuKernel::kAuto;
  if (name == "ref") return CpuKernel::kReference;
  if (name == "avx2") return CpuKernel::kAvx2;
  if (name == "vnni") return CpuKernel::kVnni;
  throw ConfigError("CPU kernel name '" + name + "' is not one of ref, avx2, vnni, auto");
}

bool cpu_kernel_available(CpuKernel kernel) {
  const CpuFeatures f = cpu_features();
  switch (kernel) {
    case CpuKernel::kAuto:
    case CpuKernel::kReference: return true;
    case CpuKernel::kAvx2: return f.avx2 && f.fma;
    case CpuKernel::kVnni: return f.avx512f && f.avx512bw && f.avx512vnni;
  }
  return false;
}

CpuKernel resolve_cpu_kernel(CpuKernel requested) {
  CpuKernel kernel = requested;
  const char* source = "requested";
  if (kernel == CpuKernel::kAuto) {
    if (const char* env = std::getenv("RESQ_CPU_KERNEL"); env != nullptr && *env != '\0') {
      try {
        kernel = parse_cpu_kernel(env);
      } catch (const ConfigError&) {
        throw ConfigError(std::string("environment variable RESQ_CPU_KERNEL='") + env +
                          "' is not one of ref, avx2, vnni, auto");
      }
      source = "RESQ_CPU_KERNEL";
    }
  }
  if (kernel == CpuKernel::kAuto) {
    if (cpu_kernel_available(CpuKernel::kVnni)) return CpuKernel::kVnni;
    if (cpu_kernel_available(CpuKernel::kAvx2)) return CpuKernel::kAvx2;
    return CpuKernel::kReference;
  }
  if (!cpu_kernel_available(kernel)) {
    throw UnsupportedError(std::string("CPU kernel '") + cpu_kernel_name(kernel) + "' (" + source +
                           ") needs instructions this CPU lacks (it has: " +
                           cpu_features_string() + ")");
  }
  return kernel;
}

}  // namespace resq::cpu
