// libFuzzer harness: config.json -> parse_model_config -> model_config_to_json -> parse again must
// give the same config; parameter_count must not overflow (UBSan) on anything accepted.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "resq/common/json_fields.h"
#include "resq/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  fuzz::expect_only_resq_errors([&] {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const ModelConfig c = parse_model_config(parse_json(text, "config.json"), "config.json");
    (void)c.parameter_count();
    const nlohmann::json back = model_config_to_json(c);
    const ModelConfig again = parse_model_config(parse_json(back.dump(), "round-trip"), "round-trip");
    if (model_config_to_json(again) != back) fuzz::invariant_failed("config.json round trip: " + back.dump());
  });
  return 0;
}
