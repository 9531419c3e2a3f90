// env_switch: unset/empty -> the default, 0/1, and a UsageError naming the variable otherwise.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "resq/common/env.h"
#include "resq/common/error.h"

namespace resq {
namespace {

TEST(EnvSwitch, DefaultZeroOneAndErrors) {
  const char* name = "RESQ_TEST_ENV_SWITCH";
  ::unsetenv(name);
  EXPECT_TRUE(env_switch(name, true));
  EXPECT_FALSE(env_switch(name, false));
  ::setenv(name, "", 1);
  EXPECT_TRUE(env_switch(name, true));
  ::setenv(name, "0", 1);
  EXPECT_FALSE(env_switch(name, true));
  ::setenv(name, "1", 1);
  EXPECT_TRUE(env_switch(name, false));
  for (const char* bad : {"yes", "true", "2", " 1"}) {
    ::setenv(name, bad, 1);
    try {
      env_switch(name, false);
      FAIL() << bad;
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()), std::string(name) + ": expected 0 or 1, got '" + bad + "'");
    }
  }
  ::unsetenv(name);
}

}  // namespace
}  // namespace resq
