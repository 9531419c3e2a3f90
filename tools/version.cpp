// `resq --version`: version, build type, libtorch version, threads, CUDA availability.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include <sstream>

#include "common.h"

namespace resq::tools {

std::string version_text() {
  std::ostringstream s;
  s << "resq " << RESQ_VERSION << " (" << RESQ_BUILD_TYPE << " build)\n"
    << "libtorch " << TORCH_VERSION << ", intra-op threads " << at::get_num_threads() << "\n"
    << "CUDA: " << (at::hasCUDA() ? "available" : "not available") << "\n";
  return s.str();
}

}  // namespace resq::tools
