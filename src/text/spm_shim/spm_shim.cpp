// A C-ABI shim around libsentencepiece, built as a loadable module and loaded with
// dlmopen(LM_ID_NEWLM). Why: Debian's libsentencepiece embeds and exports its own copy of
// protobuf-lite, which clashes with the libprotobuf that libtorch loads (crash during static
// initialisation when both share a symbol scope; RTLD_DEEPBIND instead breaks libstdc++'s
// std::cerr copy relocation inside the trainer). In its own namespace each keeps its own.
// Only C types cross the boundary; buffers are freed by the side that allocated them.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
void set_error(char* err, size_t len, const std::string& msg) {
  if (err && len) {
    std::strncpy(err, msg.c_str(), len - 1);
    err[len - 1] = '\0';
  }
}
}  // namespace

extern "C" {

__attribute__((visibility("default"))) void* resq_spm_load(const char* path, char* err, size_t err_len) {
  // libsentencepiece throws on some malformed models (Darts: "zero-length key" for a piece that
  // starts with NUL): no exception may cross this C boundary (nor the link-map namespace).
  auto* p = new sentencepiece::SentencePieceProcessor();
  try {
    const auto status = p->Load(path);
    if (status.ok()) return p;
    set_error(err, err_len, status.ToString());
  } catch (const std::exception& e) {
    set_error(err, err_len, std::string("malformed model: ") + e.what());
  } catch (...) {
    set_error(err, err_len, "malformed model (unknown exception)");
  }
  delete p;
  return nullptr;
}

__attribute__((visibility("default"))) void resq_spm_free(void* handle) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(handle);
}

// ids: malloc()ed array of *count ints, freed by resq_spm_free_buffer. Returns 0 on success.
__attribute__((visibility("default"))) int resq_spm_encode(void* handle, const char* text, size_t len, int** ids,
                                                           size_t* count, char* err, size_t err_len) {
  std::vector<int> out;
  try {
    const auto status =
        static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Encode(std::string(text, len), &out);
    if (!status.ok()) {
      set_error(err, err_len, status.ToString());
      return 1;
    }
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
  *count = out.size();
  *ids = static_cast<int*>(std::malloc(sizeof(int) * (out.empty() ? 1 : out.size())));
  if (!out.empty()) std::memcpy(*ids, out.data(), sizeof(int) * out.size());
  return 0;
}

__attribute__((visibility("default"))) int resq_spm_decode(void* handle, const int* ids, size_t count, char** text,
                                                           size_t* len, char* err, size_t err_len) {
  std::string out;
  try {
    const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Decode(
        std::vector<int>(ids, ids + count), &out);
    if (!status.ok()) {
      set_error(err, err_len, status.ToString());
      return 1;
    }
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
  *len = out.size();
  *text = static_cast<char*>(std::malloc(out.size() + 1));
  std::memcpy(*text, out.data(), out.size());
  (*text)[out.size()] = '\0';
  return 0;
}

__attribute__((visibility("default"))) void resq_spm_free_buffer(void* buffer) { std::free(buffer); }

__attribute__((visibility("default"))) int resq_spm_piece_size(void* handle) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->GetPieceSize();
}

__attribute__((visibility("default"))) int resq_spm_bos_id(void* handle) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->bos_id();
}

__attribute__((visibility("default"))) int resq_spm_train(const char* args, unsigned int seed, char* err,
                                                         size_t err_len) {
  sentencepiece::SetRandomGeneratorSeed(seed);
  try {
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok()) {
      set_error(err, err_len, status.ToString());
      return 1;
    }
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
    return 1;
  }
  return 0;
}

}  // extern "C"
