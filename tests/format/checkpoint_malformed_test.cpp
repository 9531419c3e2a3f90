// The reader's rejection of malformed packed checkpoints (truncated files, flipped bytes, wrong
// versions, shape mismatches, missing or unknown tensors, deep or overflowing JSON, checksums,
// non-finite tensors) with clear errors naming the file, tensor or key. Torch-free (runs under ASan).
#include "format/checkpoint_fixture.h"

namespace resq::format {
namespace {

TEST_F(MalformedCheckpoint, TheUntouchedCheckpointOpens) { EXPECT_NO_THROW(PackedCheckpoint::open(dir_)); }

TEST_F(MalformedCheckpoint, TruncatedFileAtManyLengths) {
  int errors = 0;
  for (size_t len = 0; len < original_.size(); len += 1 + original_.size() / 97) {
    test::write_file(model_, original_.substr(0, len));
    EXPECT_THROW(PackedCheckpoint::open(dir_), Error) << "length " << len;
    ++errors;
  }
  EXPECT_GT(errors, 90);
}

TEST_F(MalformedCheckpoint, FlippedBytesNeverCrash) {
  // Every byte of the header, and random bytes of the data, flipped one at a time: the reader
  // either rejects the file with a resq::Error or (for data bytes that stay in range) accepts it.
  uint64_t header_len = 0;
  std::memcpy(&header_len, original_.data(), 8);
  std::mt19937_64 rng(1234);
  int rejected = 0, accepted = 0;
  for (size_t i = 0; i < 8 + header_len + 400; ++i) {
    const size_t pos = i < 8 + header_len ? i : 8 + header_len + rng() % (original_.size() - 8 - header_len);
    std::string bytes = original_;
    bytes[pos] = static_cast<char>(bytes[pos] ^ (1 << (rng() % 8)));
    test::write_file(model_, bytes);
    try {
      PackedCheckpoint::open(dir_);
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, static_cast<int>(header_len) / 2);
  EXPECT_GT(accepted, 0);  // flips inside in-range int8 data are valid checkpoints
}

TEST_F(MalformedCheckpoint, WrongFormatVersion) {
  rewrite_meta([](json& j) { j["format_version"] = 2; });
  expect_error("checkpoint format_version 2 is not supported");
}

TEST_F(MalformedCheckpoint, WrongFormatName) {
  rewrite_meta([](json& j) { j["format"] = "resq-simulated"; });
  expect_error("'format' must be \"resq-packed\", got \"resq-simulated\"");
}

TEST_F(MalformedCheckpoint, WrongKernelLayoutVersion) {
  rewrite_meta([](json& j) { j["kernel_layout_version"] = 7; });
  expect_error("kernel_layout_version 7 is not supported");
}

TEST_F(MalformedCheckpoint, UnknownKeyInMetadata) {
  rewrite_meta([](json& j) { j["sites"]["q_proj"]["bitz"] = 4; });
  expect_error("unknown key 'sites.q_proj.bitz'");
}

TEST_F(MalformedCheckpoint, MetadataShapeDisagreesWithConfig) {
  rewrite_meta([](json& j) { j["sites"]["o_proj"]["in_features"] = 32; });
  expect_error("'sites.o_proj.in_features' must be an integer in [16, 16], got 32");
}

TEST_F(MalformedCheckpoint, HighCountChangesTheExpectedShapes) {
  rewrite_meta([](json& j) { j["sites"]["q_proj"]["high"]["count"] = 3; });
  expect_error("tensor 'model.layers.0.self_attn.q_proj.qweight8' has shape [16, 2], expected [16, 3]");
}

TEST_F(MalformedCheckpoint, MissingTensor) {
  rewrite_tensors([](auto& ts, auto&) {
    ts.erase(std::remove_if(ts.begin(), ts.end(), [](const TensorToWrite& t) { return t.name == "model.layers.1.mlp.up_proj.scale8"; }),
             ts.end());
  });
  expect_error("tensor 'model.layers.1.mlp.up_proj.scale8' is missing");
}

TEST_F(MalformedCheckpoint, UnknownTensor) {
  rewrite_tensors([](auto& ts, auto& storage) {
    storage.push_back(std::vector<uint8_t>(4, 0));
    ts.push_back({"model.layers.0.extra", DType::F32, {1}, storage.back().data(), 4});
  });
  expect_error("unexpected tensor 'model.layers.0.extra'");
}

TEST_F(MalformedCheckpoint, TensorShapeMismatch) {
  rewrite_tensors([](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.k_proj.qweight8") t.shape = {t.shape[1], t.shape[0]};
  });
  expect_error("tensor 'model.layers.0.self_attn.k_proj.qweight8' has shape [2, 8], expected [8, 2]");
}

TEST_F(MalformedCheckpoint, WrongDtype) {
  rewrite_tensors([](auto& ts, auto&) {
    for (auto& t : ts)
      if (t.name == "model.layers.0.self_attn.k_proj.qweight8") t.dtype = DType::U8;
  });
  expect_error("has dtype U8, expected I8");
}

TEST_F(MalformedCheckpoint, NonPositiveScale) {
  rewrite_tensors([](auto& ts, auto& storage) {
    for (auto& t : ts) {
      if (t.name == "model.layers.1.mlp.down_proj.scale4") {
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        const float bad = -0.5f;
        std::memcpy(storage.back().data() + 4, &bad, 4);
        t.data = storage.back().data();
      }
    }
  });
  expect_error("'model.layers.1.mlp.down_proj.scale4' element 1 = -0.500000 is not a finite positive scale");
}

TEST_F(MalformedCheckpoint, WrongPermutation) {
  rewrite_tensors([](auto& ts, auto& storage) {
    for (auto& t : ts) {
      if (t.name == "model.layers.0.self_attn.o_proj.perm") {
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        std::swap_ranges(storage.back().begin(), storage.back().begin() + 4, storage.back().begin() + 4);
        t.data = storage.back().data();
      }
    }
  });
  expect_error("'model.layers.0.self_attn.o_proj.perm' is not the column order");
}

TEST_F(MalformedCheckpoint, OutOfRangeValuesForTheStatedBits) {
  // Declare 3-bit low parts: the random 4-bit values written by the fixture now violate the range.
  rewrite_meta([](json& j) { j["sites"]["gate_proj"]["weight_bits"]["low"] = 3; });
  expect_error("is outside the 3-bit range");
}

TEST_F(MalformedCheckpoint, BadHadamardSign) {
  rewrite_tensors([](auto& ts, auto& storage) {
    for (auto& t : ts) {
      if (t.name == "resq.down_hadamard.signs") {
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        const float bad = 0.5f;
        std::memcpy(storage.back().data(), &bad, 4);
        t.data = storage.back().data();
      }
    }
  });
  expect_error("'resq.down_hadamard.signs' element 0 is not +1 or -1");
}

TEST_F(MalformedCheckpoint, MissingConfigFiles) {
  fs::remove(fs::path(dir_) / "config.json");
  EXPECT_THROW(PackedCheckpoint::open(dir_), Error);
  fs::remove(fs::path(dir_) / kCheckpointConfigFile);
  expect_error("not a resq packed checkpoint");
}

TEST_F(MalformedCheckpoint, InvalidJson) {
  test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), meta_text_.substr(0, meta_text_.size() / 2));
  expect_error("invalid JSON");
}

// Issue 19, defect 1: a deeply nested value in resq_config.json (here the free-form provenance)
// parsed, then overflowed the stack when the metadata was copied. Refused at the parser now.
TEST_F(MalformedCheckpoint, DeeplyNestedMetadataIsRefused) {
  const size_t n = 100000;
  std::string text = meta_text_;
  const std::string key = "\"provenance\": ";
  const size_t at = text.find(key);
  ASSERT_NE(at, std::string::npos);
  const size_t end = text.find('}', at) + 1;  // the provenance object is flat
  text.replace(at + key.size(), end - at - key.size(), std::string(n, '[') + std::string(n, ']'));
  test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), text);
  expect_error(kCheckpointConfigFile + std::string(": invalid JSON at 'provenance[0][0][0]"));
  expect_error("nested deeper than 128 levels");
}

// Issue 19, defect 2: a number beyond double in resq_config.json escaped as nlohmann's
// out_of_range ("internal error"); now a FormatError naming the file and the key.
TEST_F(MalformedCheckpoint, NumberOverflowNamesTheKey) {
  std::string text = meta_text_;
  const size_t at = text.find("\"k_clip_ratio\": ");
  ASSERT_NE(at, std::string::npos);
  const size_t value = at + std::string("\"k_clip_ratio\": ").size();
  text.replace(value, text.find_first_of(",\n}", value) - value, "1e400");
  test::write_file((fs::path(dir_) / kCheckpointConfigFile).string(), text);
  try {
    PackedCheckpoint::open(dir_);
    ADD_FAILURE() << "1e400 accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("resq_config.json: invalid JSON at 'kv_cache.k_clip_ratio': number overflow "
                                         "parsing '1e400'"),
              std::string::npos)
        << e.what();
  }
}

// Issue 19, defect 3: config.json dimensions whose products overflow int64 (heads x head_dim, the
// parameter count) reached PackedCheckpoint::open before any tensor was checked (UBSan: signed
// overflow). They are bounded when config.json is read; scripts/test-asan.sh runs this under UBSan.
TEST_F(MalformedCheckpoint, HugeConfigDimensionsAreRefusedBeforeAnyArithmetic) {
  const std::string config_path = (fs::path(dir_) / "config.json").string();
  const json original = json::parse(test::read_file(config_path));
  const auto with = [&](const json& changes) {
    json c = original;
    for (auto it = changes.begin(); it != changes.end(); ++it) c[it.key()] = it.value();
    test::write_file(config_path, c.dump());
  };
  with({{"num_attention_heads", 16384}, {"num_key_value_heads", 16384}, {"head_dim", 1048576}});
  expect_error("config.json: 'num_attention_heads' x head_dim = 17179869184 exceeds 1048576");
  with({{"hidden_size", int64_t{1} << 62}});
  expect_error("config.json: 'hidden_size' must be an integer in [1, 1048576], got 4611686018427387904");
  with({{"num_hidden_layers", int64_t{1} << 40}});
  expect_error("'num_hidden_layers' must be an integer in [1, 4096]");
  with({{"vocab_size", int64_t{1} << 30}});
  expect_error("'vocab_size' must be an integer in [1, 16777216]");
  with({{"hidden_size", 1048576}, {"intermediate_size", 1048576}, {"vocab_size", 16777216},
        {"num_hidden_layers", 4096}, {"num_attention_heads", 16384}, {"num_key_value_heads", 16384},
        {"head_dim", 64}});
  // The largest accepted config: every size fits in int64; the metadata no longer matches it.
  expect_error("'sites.q_proj.out_features' must be an integer in [1048576, 1048576], got 16");
}


// ------------------------------------------------------------------ integrity (format 1.1)

TEST_F(MalformedCheckpoint, EveryTensorHasItsChecksumInTheMetadata) {
  const json j = json::parse(meta_text_);
  EXPECT_EQ(j.at("format_version"), 1);
  EXPECT_EQ(j.at("format_minor_version"), 2);
  EXPECT_EQ(j.at("checksums").at("algorithm"), "xxh64");
  const auto file = SafetensorsFile::open(model_);
  ASSERT_EQ(j.at("checksums").at("tensors").size(), file->tensors().size());
  for (const auto& [name, v] : file->tensors()) {
    // XXH64 itself is checked against the published values in tests/common_tests/checksum_test.cpp.
    EXPECT_EQ(j.at("checksums").at("tensors").at(name), checksum_hex(xxh64(v.data, v.nbytes))) << name;
  }
  EXPECT_EQ(PackedCheckpoint::open(dir_).verify_checksums(), static_cast<int64_t>(file->tensors().size()));
}

TEST_F(MalformedCheckpoint, AFlippedByteInAPackedWeightOrAScaleIsRefusedNamingTheTensor) {
  // Both flips leave valid values (any int8 is an 8-bit code; a scale's lowest mantissa bit keeps it
  // finite and positive): only the checksum can tell.
  for (const auto& [name, offset, bit] : std::vector<std::tuple<std::string, size_t, int>>{
           {"model.layers.1.self_attn.v_proj.qweight8", 3, 0}, {"model.layers.0.mlp.gate_proj.scale4", 4, 0}}) {
    test::write_file(model_, original_);
    flip_tensor_byte(model_, name, offset, bit);
    const PackedCheckpoint ck = PackedCheckpoint::open(dir_);
    const std::string msg = test::message_of<FormatError>([&] { ck.verify_checksums(); });
    EXPECT_NE(msg.find("tensor '" + name + "' is corrupt"), std::string::npos) << msg;
    EXPECT_NE(msg.find(model_), std::string::npos) << msg;
  }
}

// Versions 1.0 and 1.1 store one U_C per layer, [hd][hd]: keep KV head 0's of the 1.2 fixture.
void keep_one_qk_rotation_per_layer(std::vector<TensorToWrite>& ts, std::vector<std::vector<uint8_t>>&) {
  for (auto& t : ts) {
    if (t.name.find(".qk_rotation") == std::string::npos) continue;
    ASSERT_EQ(t.shape.size(), 3u) << t.name;
    t.shape = {t.shape[1], t.shape[2]};
    t.nbytes = static_cast<size_t>(t.shape[0] * t.shape[1]) * 4;
  }
}

TEST_F(MalformedCheckpoint, Version10CheckpointsWithoutChecksumsStillOpen) {
  rewrite_meta([](json& j) {
    j.erase("format_minor_version");
    j.erase("checksums");
  });
  expect_error("tensor 'resq.layers.0.qk_rotation' has shape [1, 8, 8], expected [8, 8]");
  rewrite_tensors(keep_one_qk_rotation_per_layer);
  const PackedCheckpoint ck = PackedCheckpoint::open(dir_);
  EXPECT_EQ(ck.meta().format_minor_version, 0);
  EXPECT_EQ(ck.verify_checksums(), 0);
}

TEST_F(MalformedCheckpoint, Version11CheckpointsHaveOneQkRotationPerLayer) {
  rewrite_tensors(keep_one_qk_rotation_per_layer);
  // A 1.1 checkpoint lists the checksum of every tensor: those of the rewritten file.
  const auto file = SafetensorsFile::open(model_);
  rewrite_meta([&](json& j) {
    j["format_minor_version"] = 1;
    for (const auto& [name, v] : file->tensors()) j["checksums"]["tensors"][name] = checksum_hex(xxh64(v.data, v.nbytes));
  });
  const PackedCheckpoint ck = PackedCheckpoint::open(dir_);
  EXPECT_EQ(ck.meta().format_minor_version, 1);
  EXPECT_EQ(qk_rotation_shape(ck.meta()), (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(ck.verify_checksums(), static_cast<int64_t>(file->tensors().size()));
}

TEST_F(MalformedCheckpoint, ChecksumListMustMatchTheTensors) {
  rewrite_meta([](json& j) { j["checksums"]["tensors"].erase("lm_head.weight"); });
  expect_error("no checksum for tensor 'lm_head.weight'");
  rewrite_meta([](json& j) { j["checksums"]["tensors"]["ghost"] = "0123456789abcdef"; });
  expect_error("checksum for tensor 'ghost', which is not in the checkpoint");
  rewrite_meta([](json& j) { j["checksums"]["tensors"]["lm_head.weight"] = "xyz"; });
  expect_error("'checksums.tensors[\"lm_head.weight\"]' must be a string of 16 lowercase hex digits");
  rewrite_meta([](json& j) { j["checksums"]["algorithm"] = "md5"; });
  expect_error("checksums.algorithm");
  rewrite_meta([](json& j) { j.erase("checksums"); });
  expect_error("checksums");
  rewrite_meta([](json& j) { j["format_minor_version"] = 3; });
  expect_error("checkpoint format version 1.3 is newer than this resq reads (1.2)");
}

TEST_F(MalformedCheckpoint, NonFiniteFloatTensorsAreRefused) {
  // An all-NaN lm_head, an infinite embedding, a NaN norm: each named with its element.
  auto poison = [&](const std::string& name, size_t element, uint32_t bits) {
    test::write_file(model_, original_);
    rewrite_tensors([&](auto& ts, auto& storage) {
      for (auto& t : ts) {
        if (t.name != name) continue;
        storage.emplace_back(static_cast<const uint8_t*>(t.data), static_cast<const uint8_t*>(t.data) + t.nbytes);
        for (size_t i = element; i < t.nbytes / 4; i += (name == "lm_head.weight" ? 1 : t.nbytes)) {
          std::memcpy(storage.back().data() + 4 * i, &bits, 4);
        }
        t.data = storage.back().data();
      }
    });
  };
  poison("lm_head.weight", 0, 0x7FC00000u);
  expect_error("tensor 'lm_head.weight' element 0 is NaN");
  poison("model.embed_tokens.weight", 17, 0xFF800000u);
  expect_error("tensor 'model.embed_tokens.weight' element 17 is -inf");
  poison("model.layers.1.input_layernorm.weight", 3, 0x7F800000u);
  expect_error("'model.layers.1.input_layernorm.weight' element 3");
}

}  // namespace
}  // namespace resq::format
