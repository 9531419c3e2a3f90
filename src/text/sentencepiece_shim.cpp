// Loads the SentencePiece shim module in its own link-map namespace (dlmopen) and forwards calls.
#include "resq/text/sentencepiece_shim.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "resq/common/error.h"

namespace resq::spm {
namespace {

struct Api {
  void* (*load)(const char*, char*, size_t);
  void (*free_model)(void*);
  int (*encode)(void*, const char*, size_t, int**, size_t*, char*, size_t);
  int (*decode)(void*, const int*, size_t, char**, size_t*, char*, size_t);
  void (*free_buffer)(void*);
  int (*piece_size)(void*);
  int (*bos_id)(void*);
  int (*train)(const char*, unsigned int, char*, size_t);
};

std::string executable_dir() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  return std::filesystem::path(buf).parent_path().string();
}

// Search order: $RESQ_SPM_SHIM, next to the running executable, the build tree's path.
const Api& api() {
  static Api table;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("RESQ_SPM_SHIM")) candidates.push_back(env);
    candidates.push_back(executable_dir() + "/libresq_spm_shim.so");
#ifdef RESQ_SPM_SHIM_PATH
    candidates.push_back(RESQ_SPM_SHIM_PATH);
#endif
    void* lib = nullptr;
    std::string errors;
    for (const auto& path : candidates) {
      if (!std::filesystem::exists(path)) {
        errors += "\n  " + path + ": not found";
        continue;
      }
      // A separate link-map namespace: the shim gets its own copies of libsentencepiece (with
      // its embedded protobuf-lite) and of libstdc++, isolated from libtorch's libprotobuf.
      lib = ::dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
      errors += "\n  " + path + ": " + ::dlerror();
    }
    if (!lib) throw IoError("cannot load the SentencePiece shim libresq_spm_shim.so:" + errors);
    auto sym = [&](const char* name) {
      void* p = ::dlsym(lib, name);
      if (!p) throw IoError(std::string("SentencePiece shim lacks symbol ") + name);
      return p;
    };
    table.load = reinterpret_cast<decltype(table.load)>(sym("resq_spm_load"));
    table.free_model = reinterpret_cast<decltype(table.free_model)>(sym("resq_spm_free"));
    table.encode = reinterpret_cast<decltype(table.encode)>(sym("resq_spm_encode"));
    table.decode = reinterpret_cast<decltype(table.decode)>(sym("resq_spm_decode"));
    table.free_buffer = reinterpret_cast<decltype(table.free_buffer)>(sym("resq_spm_free_buffer"));
    table.piece_size = reinterpret_cast<decltype(table.piece_size)>(sym("resq_spm_piece_size"));
    table.bos_id = reinterpret_cast<decltype(table.bos_id)>(sym("resq_spm_bos_id"));
    table.train = reinterpret_cast<decltype(table.train)>(sym("resq_spm_train"));
  });
  return table;
}

}  // namespace

Model::Model(const std::string& path) {
  char err[1024] = {0};
  handle_ = api().load(path.c_str(), err, sizeof err);
  if (!handle_) throw IoError(path + ": cannot load SentencePiece model: " + err);
}

Model::~Model() {
  if (handle_) api().free_model(handle_);
}

std::vector<int> Model::encode(const std::string& text) const {
  char err[1024] = {0};
  int* ids = nullptr;
  size_t count = 0;
  if (api().encode(handle_, text.data(), text.size(), &ids, &count, err, sizeof err) != 0) {
    throw Error(std::string("SentencePiece encode failed: ") + err);
  }
  std::vector<int> out(ids, ids + count);
  api().free_buffer(ids);
  return out;
}

std::string Model::decode(const std::vector<int>& ids) const {
  char err[1024] = {0};
  char* text = nullptr;
  size_t len = 0;
  if (api().decode(handle_, ids.data(), ids.size(), &text, &len, err, sizeof err) != 0) {
    throw Error(std::string("SentencePiece decode failed: ") + err);
  }
  std::string out(text, len);
  api().free_buffer(text);
  return out;
}

int Model::piece_size() const { return api().piece_size(handle_); }
int Model::bos_id() const { return api().bos_id(handle_); }

void train(const std::string& args, unsigned int seed) {
  char err[1024] = {0};
  if (api().train(args.c_str(), seed, err, sizeof err) != 0) throw Error(std::string("SentencePiece training failed: ") + err);
}

}  // namespace resq::spm
