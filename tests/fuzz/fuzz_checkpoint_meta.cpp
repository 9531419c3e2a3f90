// libFuzzer harness: config.json + resq_config.json -> CheckpointMeta::from_json; what it accepts
// must serialize and read back to the same JSON.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "resq/common/json_fields.h"
#include "resq/format/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  const std::vector<std::string> s = fuzz::split_sections(data, size, 2);
  fuzz::expect_only_resq_errors([&] {
    const ModelConfig c = parse_model_config(parse_json(s[0], "config.json"), "config.json");
    const nlohmann::json j = parse_json(s[1], "resq_config.json", JsonErrorKind::kFormat);
    const format::CheckpointMeta m = format::CheckpointMeta::from_json(j, c, "resq_config.json");
    const nlohmann::json back = m.to_json();
    if (format::CheckpointMeta::from_json(back, c, "round-trip").to_json() != back) {
      fuzz::invariant_failed("resq_config.json round trip: " + back.dump());
    }
  });
  return 0;
}
