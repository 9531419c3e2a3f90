// Helpers shared by the test suites: locating ../shared data and temporary directories.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "resq/common/file.h"

namespace resq::test {

// Directory of the read-only shared data (env RESQ_SHARED_DIR, else <source>/../shared).
inline std::string shared_dir() {
  if (const char* env = std::getenv("RESQ_SHARED_DIR")) return env;
  return RESQ_SHARED_DIR_DEFAULT;
}

// Absolute path of a file under shared/; fails the test (not skips) if it is missing: the suite
// is specified to run against the real data, and a silently skipped test would hide that.
inline std::string shared_path(const std::string& relative) {
  std::string path = shared_dir() + "/" + relative;
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << "shared data missing: " << path << " (set RESQ_SHARED_DIR)";
  }
  return path;
}

// Whole files through the library's reader: a missing file throws IoError naming it.
using resq::read_file;

// Runs `fn`, which must throw E, and returns the message (a test failure and "" otherwise).
template <typename E, typename Fn>
std::string message_of(Fn&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type, message: " << e.what();
    return "";
  }
  ADD_FAILURE() << "no exception thrown";
  return "";
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// The names of a directory's entries, sorted.
inline std::vector<std::string> directory_entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// A fresh temporary directory removed when the object goes out of scope.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    std::mt19937_64 rng(rd());
    path_ = std::filesystem::temp_directory_path() / ("resq_test_" + std::to_string(rng()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace resq::test
