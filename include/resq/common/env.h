// On/off switches read from the environment (RESQ_QUANTIZE_GENERIC, RESQ_GPTQ_TORCH, ...): one
// parser, one error message naming the variable.
#pragma once

namespace resq {

// The switch `name`: unset or empty -> default_value, "0" -> false, "1" -> true; anything else is a
// UsageError naming the variable and the value it has.
bool env_switch(const char* name, bool default_value);

}  // namespace resq
