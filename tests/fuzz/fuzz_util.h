// Helpers of the libFuzzer harnesses (tests/fuzz, docs/FUZZING.md): splitting one input into the
// files of a directory, a per-process scratch directory, and the rule every harness checks —
// bad input may only throw resq's typed errors.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "resq/common/error.h"

namespace resq::fuzz {

// Separates the files of one input ("config.json", then "resq_config.json", ...); the dictionaries
// carry it so that mutations keep or make the sections.
constexpr std::string_view kSectionMark = "\n%%resq-fuzz-file%%\n";

// The first `n` sections of the input (missing ones empty; the last takes the rest).
inline std::vector<std::string> split_sections(const uint8_t* data, size_t size, size_t n) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> out;
  while (out.size() + 1 < n) {
    const size_t at = rest.find(kSectionMark);
    if (at == std::string_view::npos) break;
    out.emplace_back(rest.substr(0, at));
    rest.remove_prefix(at + kSectionMark.size());
  }
  out.emplace_back(rest);
  out.resize(n);
  return out;
}

// The inverse, for the seed maker.
inline std::string join_sections(const std::vector<std::string>& sections) {
  std::string out;
  for (size_t i = 0; i < sections.size(); ++i) {
    if (i) out += kSectionMark;
    out += sections[i];
  }
  return out;
}

// A safetensors file from "header JSON" + kSectionMark + "data bytes": the 8-byte length is made
// here so that mutations of the header stay readable. Input without the mark is the file itself.
inline std::string safetensors_bytes(const std::string& input) {
  const size_t at = input.find(kSectionMark);
  if (at == std::string::npos) return input;
  const uint64_t n = at;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + input.substr(0, at) + input.substr(at + kSectionMark.size());
}

// A directory of this process (under /dev/shm when it exists: the harnesses write files on every
// run), emptied by each clear().
class ScratchDir {
 public:
  ScratchDir() {
    namespace fs = std::filesystem;
    const char* base = fs::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    path_ = std::string(base) + "/resq-fuzz-" + std::to_string(::getpid());
    fs::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  void clear() {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(path_)) {
      std::filesystem::remove_all(entry.path(), ec);
    }
  }
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }

 private:
  std::string path_;
};

// Runs `fn`: resq::Error is the expected outcome of bad input; any other exception (nlohmann's,
// std::filesystem's, std::out_of_range...) is what `resq` would print as "internal error", so it
// aborts and libFuzzer records the input.
template <typename Fn>
void expect_only_resq_errors(Fn&& fn) {
  try {
    fn();
  } catch (const resq::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resq fuzz: untyped exception escaped: %s\n", e.what());
    std::abort();
  }
}

// Stops the harness with a message: a broken invariant (a round trip that changed a value).
[[noreturn]] inline void invariant_failed(const std::string& what) {
  std::fprintf(stderr, "resq fuzz: invariant broken: %s\n", what.c_str());
  std::abort();
}

}  // namespace resq::fuzz
