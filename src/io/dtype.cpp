// DType names and sizes, and parsing of safetensors dtype strings (the scalar fp16/bf16
// conversions are inline in dtype.h).
#include "resq/io/dtype.h"

#include "resq/common/error.h"

namespace resq {

namespace {

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
    {DType::I16, "I16", 2}, {DType::I8, "I8", 1}, {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
};

const DTypeInfo& info_of(DType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return info;
  }
  // Only reachable through a cast of an out-of-range integer to DType.
  throw UsageError("invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace

size_t dtype_size(DType dtype) { return info_of(dtype).size; }

std::string dtype_name(DType dtype) { return info_of(dtype).name; }

DType parse_dtype(const std::string& name) {
  std::string accepted;
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
    accepted += accepted.empty() ? "" : ", ";
    accepted += info.name;
  }
  throw FormatError("unknown dtype '" + name + "' (expected one of " + accepted + ")");
}

bool dtype_is_floating(DType dtype) {
  return dtype == DType::F64 || dtype == DType::F32 || dtype == DType::F16 ||
         dtype == DType::BF16;
}

}  // namespace resq
