// Helper of the byte-level BPE differential test and benchmark: runs resq's BpeTokenizer on
// strings sent by tests/text/diff/diff.mjs, or times the encoding of a whole file.
//
//   bpe_encode_tool --serve
//       stdin, one JSON request a line: {"dir": DIR, "texts": [string, ...]}
//       stdout, one JSON reply a line:  {"ids": [[id, ...], ...], "decoded": [string, ...]}
//       or {"error": message}. Tokenizers are loaded once per directory.
//   bpe_encode_tool --bench DIR FILE [REPEATS]
//       prints load time, then the best of REPEATS encodings of FILE (fresh word cache each time).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "resq/common/error.h"
#include "resq/text/bpe_tokenizer.h"
#include "resq/text/tokenizer.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int serve() {
  std::map<std::string, std::unique_ptr<resq::Tokenizer>> tokenizers;
  std::string line;
  while (std::getline(std::cin, line)) {
    json reply;
    try {
      const json request = json::parse(line);
      const std::string dir = request.at("dir").get<std::string>();
      auto it = tokenizers.find(dir);
      if (it == tokenizers.end()) it = tokenizers.emplace(dir, resq::load_bpe_tokenizer(dir)).first;
      json ids = json::array(), decoded = json::array();
      for (const json& text : request.at("texts")) {
        const std::vector<int32_t> encoded = it->second->encode(text.get<std::string>());
        ids.push_back(encoded);
        decoded.push_back(it->second->decode(encoded));
      }
      reply["ids"] = std::move(ids);
      reply["decoded"] = std::move(decoded);
    } catch (const std::exception& e) {
      reply = json{{"error", e.what()}};
    }
    std::cout << reply.dump(-1, ' ', false, json::error_handler_t::replace) << '\n' << std::flush;
  }
  return 0;
}

int bench(const std::string& dir, const std::string& file, int repeats) {
  const auto load_start = Clock::now();
  auto tokenizer = resq::load_bpe_tokenizer(dir);
  const double load_s = seconds_since(load_start);
  std::FILE* f = std::fopen(file.c_str(), "rb");
  if (f == nullptr) throw resq::IoError(file + ": cannot open");
  std::string text;
  char buffer[1 << 16];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), f)) > 0;) text.append(buffer, n);
  std::fclose(f);
  double best = 1e30;
  size_t tokens = 0;
  for (int r = 0; r < repeats; ++r) {
    auto fresh = resq::load_bpe_tokenizer(dir);  // empty word cache: a cold run each time
    const auto start = Clock::now();
    tokens = fresh->encode(text).size();
    best = std::min(best, seconds_since(start));
  }
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("resq bpe: %s on %s: load %.3f s; encode %zu bytes -> %zu tokens in %.3f s "
              "(%.3f s/MB, %.2f MB/s), best of %d\n",
              dir.c_str(), file.c_str(), load_s, text.size(), tokens, best, best / mb, mb / best,
              repeats);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (args.size() == 1 && args[0] == "--serve") return serve();
    if ((args.size() == 3 || args.size() == 4) && args[0] == "--bench") {
      return bench(args[1], args[2], args.size() == 4 ? std::stoi(args[3]) : 3);
    }
    std::cerr << "usage: bpe_encode_tool --serve | --bench DIR FILE [REPEATS]\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "bpe_encode_tool: " << e.what() << '\n';
    return 1;
  }
}
