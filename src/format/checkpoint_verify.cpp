// Integrity of a packed checkpoint: the per-tensor XXH64 checksums of resq_config.json (format 1.1),
// their JSON form, the name check PackedCheckpoint::open runs and the byte check verify_checksums()
// runs (`resq inspect`, `resq eval --verify`).
#include <filesystem>

#include "checkpoint_checksums.h"
#include "resq/common/checksum.h"
#include "resq/common/error.h"
#include "resq/format/checkpoint.h"

namespace resq::format {
using nlohmann::json;

json checksums_to_json(const std::map<std::string, uint64_t>& checksums) {
  json tensors = json::object();
  for (const auto& [name, value] : checksums) tensors[name] = checksum_hex(value);
  return {{"algorithm", kChecksumAlgorithm}, {"tensors", tensors}};
}

std::map<std::string, uint64_t> checksums_from_json(const JsonFields& f, const std::string& key) {
  const JsonFields c = f.object(key);
  c.one_of("algorithm", {kChecksumAlgorithm});
  const JsonFields tensors = c.object("tensors");
  std::map<std::string, uint64_t> out;
  for (const auto& [name, value] : tensors.raw().items()) {
    uint64_t v = 0;
    if (!value.is_string() || !parse_checksum_hex(value.get<std::string>(), &v)) {
      tensors.fail(name, "must be a string of 16 lowercase hex digits (an XXH64 checksum)");
    }
    tensors.find(name);  // known
    out[name] = v;
  }
  c.reject_unknown_keys();
  return out;
}

void check_checksum_names(const TensorStore& store, const std::map<std::string, uint64_t>& checksums,
                          const std::string& meta_path) {
  for (const std::string& name : store.names()) {
    if (!checksums.count(name)) {
      throw FormatError(meta_path + ": no checksum for tensor '" + name + "' (in " + store.get(name).file + ")");
    }
  }
  for (const auto& [name, value] : checksums) {
    if (!store.contains(name)) throw FormatError(meta_path + ": checksum for tensor '" + name + "', which is not in the checkpoint");
  }
}

int64_t PackedCheckpoint::verify_checksums() const {
  if (meta_.format_minor_version < 1) return 0;
  const std::string meta_path = (std::filesystem::path(dir_) / kCheckpointConfigFile).string();
  check_checksum_names(*store_, meta_.checksums, meta_path);
  int64_t verified = 0;
  for (const auto& [name, expected] : meta_.checksums) {
    const TensorView& v = store_->get(name);
    const uint64_t got = xxh64(v.data, v.nbytes);
    if (got != expected) {
      throw FormatError(v.file + ": tensor '" + name + "' is corrupt: its bytes hash to " + checksum_hex(got) + ", " + meta_path +
                        " records " + checksum_hex(expected) + " (" + kChecksumAlgorithm + ")");
    }
    ++verified;
  }
  for (const auto& f : store_->files()) f->release_pages();
  return verified;
}

}  // namespace resq::format
