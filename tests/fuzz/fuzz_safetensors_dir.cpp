// libFuzzer harness: a sharded model directory — model.safetensors.index.json, then two shards
// a.safetensors and b.safetensors (each header JSON + mark + data, as in fuzz_safetensors, the two
// separated by a second mark) -> TensorStore::open_model_dir.
#include "fuzz_util.h"
#include "resq/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  static fuzz::ScratchDir dir;
  dir.clear();
  // index | a header | a data | b header | b data
  const std::vector<std::string> s = fuzz::split_sections(data, size, 5);
  const std::string mark(fuzz::kSectionMark);
  dir.write(kSafetensorsIndexFile, s[0]);
  dir.write("a.safetensors", fuzz::safetensors_bytes(s[1] + mark + s[2]));
  dir.write("b.safetensors", fuzz::safetensors_bytes(s[3] + mark + s[4]));
  fuzz::expect_only_resq_errors([&] {
    const TensorStore store = TensorStore::open_model_dir(dir.path());
    for (const std::string& name : store.names()) (void)store.get(name).numel();
  });
  return 0;
}
