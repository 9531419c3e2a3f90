// On/off switches read from the environment (resq/common/env.h).
#include "resq/common/env.h"

#include <cstdlib>
#include <string>

#include "resq/common/error.h"

namespace resq {

bool env_switch(const char* name, bool default_value) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return default_value;
  const std::string v(env);
  if (v == "0") return false;
  if (v == "1") return true;
  throw UsageError(std::string(name) + ": expected 0 or 1, got '" + v + "'");
}

}  // namespace resq
