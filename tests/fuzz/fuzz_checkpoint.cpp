// libFuzzer harness: a whole packed checkpoint directory — config.json, resq_config.json, then
// model.safetensors (header JSON + mark + data) -> PackedCheckpoint::open, then every site of every
// layer copied out, unpacked and dequantized: what open() accepts must be safe to use.
#include "fuzz_util.h"
#include "resq/format/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  static fuzz::ScratchDir dir;
  dir.clear();
  const std::vector<std::string> s = fuzz::split_sections(data, size, 4);
  dir.write("config.json", s[0]);
  dir.write(format::kCheckpointConfigFile, s[1]);
  dir.write("model.safetensors", fuzz::safetensors_bytes(s[2] + std::string(fuzz::kSectionMark) + s[3]));
  fuzz::expect_only_resq_errors([&] {
    const format::PackedCheckpoint ck = format::PackedCheckpoint::open(dir.path());
    for (int64_t l = 0; l < ck.meta().model.num_layers; ++l) {
      for (format::SiteKind kind : format::kAllSites) {
        const format::LinearData d = ck.linear(l, kind);
        (void)d.dequantized();
        if (d.spec.storage == format::LinearStorage::kPacked) (void)d.unpacked_original_order();
      }
    }
  });
  return 0;
}
