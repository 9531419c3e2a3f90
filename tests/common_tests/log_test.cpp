// Tests of the logging facade (resq/common/log.h): level names and filtering, the stderr line
// format, and strprintf (including output longer than its internal stack buffer).
#include "resq/common/log.h"

#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdint>
#include <regex>
#include <string>

#include "resq/common/error.h"

namespace resq {
namespace {

// Runs `body` with stderr captured and returns what it wrote, without ANSI color codes (the sink
// colors the level name only on a terminal, which depends on how the test is run).
template <typename Fn>
std::string captured_stderr(Fn&& body) {
  testing::internal::CaptureStderr();
  body();
  const std::string out = testing::internal::GetCapturedStderr();
  return std::regex_replace(out, std::regex("\x1b\\[[0-9;]*m"), "");
}

class LogTest : public testing::Test {
 protected:
  void TearDown() override { log::set_level(log::Level::info); }  // the process-wide default
};

TEST_F(LogTest, DefaultLevelIsInfo) {
  EXPECT_EQ(log::level(), log::Level::info);
  EXPECT_TRUE(log::enabled(log::Level::info));
  EXPECT_TRUE(log::enabled(log::Level::error));
  EXPECT_FALSE(log::enabled(log::Level::debug));
}

TEST_F(LogTest, AcceptsTheLogLevelNames) {
  const std::pair<const char*, log::Level> names[] = {
      {"trace", log::Level::trace}, {"debug", log::Level::debug},     {"info", log::Level::info},
      {"warning", log::Level::warn}, {"warn", log::Level::warn},      {"error", log::Level::error},
      {"err", log::Level::error},   {"critical", log::Level::critical}, {"off", log::Level::off}};
  for (const auto& [name, level] : names) {
    log::set_level(name);
    EXPECT_EQ(log::level(), level) << name;
  }
}

TEST_F(LogTest, BadLevelNameIsAUsageErrorAndKeepsTheLevel) {
  log::set_level("warn");
  for (const char* bad : {"verbose", "INFO", "", "off "}) {
    try {
      log::set_level(bad);
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--log-level: expected trace, debug, info, warn, error or off, got '" +
                                           std::string(bad) + "'"),
                std::string::npos)
          << e.what();
    }
    EXPECT_EQ(log::level(), log::Level::warn);
  }
}

TEST_F(LogTest, WritesOneFormattedLineToStderr) {
  const std::string out = captured_stderr([] { log::info("hello 42"); });
  EXPECT_TRUE(std::regex_match(out, std::regex(R"(\[\d\d:\d\d:\d\d\.\d{3}\] \[info\] hello 42\n)"))) << out;
}

TEST_F(LogTest, FiltersBelowTheLevel) {
  log::set_level("warn");
  EXPECT_FALSE(log::enabled(log::Level::info));
  EXPECT_TRUE(log::enabled(log::Level::warn));
  const std::string out = captured_stderr([] {
    log::debug("d-hidden");
    log::info("i-hidden");
    log::warn("w-shown");
    log::error("e-shown");
  });
  EXPECT_EQ(out.find("hidden"), std::string::npos) << out;
  EXPECT_NE(out.find("] [warning] w-shown\n"), std::string::npos) << out;
  EXPECT_NE(out.find("] [error] e-shown\n"), std::string::npos) << out;

  log::set_level("debug");
  EXPECT_TRUE(log::enabled(log::Level::debug));
  EXPECT_FALSE(log::enabled(log::Level::trace));
  const std::string debug_out = captured_stderr([] {
    log::trace("t-hidden");
    log::debug("d-shown");
  });
  EXPECT_EQ(debug_out.find("hidden"), std::string::npos) << debug_out;
  EXPECT_NE(debug_out.find("] [debug] d-shown\n"), std::string::npos) << debug_out;
}

TEST_F(LogTest, OffWritesNothing) {
  log::set_level("off");
  EXPECT_FALSE(log::enabled(log::Level::error));
  EXPECT_FALSE(log::enabled(log::Level::off));
  EXPECT_EQ(captured_stderr([] { log::error("nothing"); }), "");
}

TEST_F(LogTest, MessagesAreNotFormatStrings) {
  const std::string out = captured_stderr([] { log::info("{} {:.2f} 100% %s %d"); });
  EXPECT_NE(out.find("] [info] {} {:.2f} 100% %s %d\n"), std::string::npos) << out;
}

TEST(StrPrintf, FormatsLikePrintf) {
  EXPECT_EQ(strprintf("%s", ""), "");
  EXPECT_EQ(strprintf("layer %" PRId64 "/%" PRId64, int64_t{3}, int64_t{16}), "layer 3/16");
  EXPECT_EQ(strprintf("seed %" PRIu64, UINT64_MAX), "seed 18446744073709551615");
  EXPECT_EQ(strprintf("%lld", static_cast<long long>(INT64_MIN)), "-9223372036854775808");
  // The progress lines' number formats ({fmt}'s {:.0f}/{:.2f}/{:.4f} before): round half to even
  // on exact ties, as both printf and {fmt} do.
  EXPECT_EQ(strprintf("%.0f tok/s", 1234.5), "1234 tok/s");
  EXPECT_EQ(strprintf("%.0f", 2.5), "2");
  EXPECT_EQ(strprintf("%.0f", 3.5), "4");
  EXPECT_EQ(strprintf("RSS %.2f GiB (peak %.2f)", 1.005, 2.0), "RSS 1.00 GiB (peak 2.00)");  // 1.005 is 1.00499...
  EXPECT_EQ(strprintf("ppl %.4f", 122.37294), "ppl 122.3729");
  EXPECT_EQ(strprintf("%zu bytes, %s%s", size_t{7}, "no ", std::string("BOS").c_str()), "7 bytes, no BOS");
  EXPECT_EQ(strprintf("100%% done"), "100% done");
}

TEST(StrPrintf, AnyLength) {
  // Every length across the internal buffer's size (256) and far beyond it.
  for (size_t n : {size_t{0}, size_t{1}, size_t{254}, size_t{255}, size_t{256}, size_t{257}, size_t{511}, size_t{4096},
                   size_t{1} << 20}) {
    const std::string body(n, 'x');
    const std::string out = strprintf("<%s|%d>", body.c_str(), 12345);
    ASSERT_EQ(out.size(), n + 8) << n;
    EXPECT_EQ(out, "<" + body + "|12345>") << n;
  }
  std::string mixed;
  for (int i = 0; i < 1000; ++i) mixed += std::to_string(i) + ",";
  EXPECT_EQ(strprintf("[%s]", mixed.c_str()), "[" + mixed + "]");
}

}  // namespace
}  // namespace resq
