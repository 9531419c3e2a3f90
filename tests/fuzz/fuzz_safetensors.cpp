// libFuzzer harness: one safetensors file (header JSON + kSectionMark + data, or raw bytes) ->
// SafetensorsFile::open, then every float tensor converted: what open() accepts must be safe to read.
#include "fuzz_util.h"
#include "resq/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace resq;
  static fuzz::ScratchDir dir;
  const std::string path =
      dir.write("model.safetensors", fuzz::safetensors_bytes(std::string(reinterpret_cast<const char*>(data), size)));
  fuzz::expect_only_resq_errors([&] {
    const TensorStore store = TensorStore::open_files({path});
    for (const std::string& name : store.names()) {
      const TensorView& v = store.get(name);
      if (dtype_is_floating(v.dtype) && v.numel() <= (1 << 16)) (void)tensor_to_float32_vector(v);
    }
  });
  return 0;
}
