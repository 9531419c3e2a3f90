// Access to libsentencepiece through the privately loaded shim module (see src/text/spm_shim/).
#pragma once

#include <string>
#include <vector>

namespace resq::spm {

// Opaque handle to a loaded SentencePiece model.
class Model {
 public:
  explicit Model(const std::string& model_path);  // throws IoError naming the file
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  std::vector<int> encode(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;
  int piece_size() const;
  int bos_id() const;  // -1 when the model has none

 private:
  void* handle_ = nullptr;
};

// SentencePieceTrainer::Train(args) after seeding its random generator; throws resq::Error with
// the trainer's message.
void train(const std::string& args, unsigned int seed);

}  // namespace resq::spm
