// resq_config.json's "checksums" object (format 1.1, docs/FORMAT.md 2.2) to and from JSON; private
// to src/format (the schema reads and writes it, checkpoint_verify.cpp checks it).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "resq/common/json_fields.h"
#include "resq/io/safetensors.h"

namespace resq::format {

// {"algorithm": "xxh64", "tensors": {name: 16 hex digits}}
nlohmann::json checksums_to_json(const std::map<std::string, uint64_t>& checksums);
// The object `key` of `f` in that form (FormatError naming the key otherwise).
std::map<std::string, uint64_t> checksums_from_json(const JsonFields& f, const std::string& key);

// FormatError naming `meta_path` unless the checksums list exactly the tensors of `store`.
void check_checksum_names(const TensorStore& store, const std::map<std::string, uint64_t>& checksums,
                          const std::string& meta_path);

}  // namespace resq::format
