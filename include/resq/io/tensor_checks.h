// Finiteness of stored tensors, read in place (no conversion, no copy): every loader that must not
// let a NaN or an infinity through (the quantizer's source weights, the packed checkpoint reader)
// asks here.
#pragma once

#include <cstdint>
#include <string>

#include "resq/io/safetensors.h"

namespace resq {

// Index of the first NaN or ±infinity of a floating tensor (F64, F32, BF16, F16), or -1 when there is
// none or the dtype is not floating.
int64_t first_non_finite(const TensorView& v);

// FormatError "<file>: tensor '<name>' element <i> is NaN: <why>" (or "+inf", "-inf") unless every
// element is finite. `why` says what the tensor was needed for.
void require_finite(const TensorView& v, const std::string& why);

// require_finite for every floating tensor of the store's files, file by file, releasing the pages
// read after each tensor (the resident memory of the scan stays one tensor).
void require_finite(const TensorStore& store, const std::string& why);

}  // namespace resq
