// Tests of the safetensors reader/writer: round trips of every dtype, HF's own serialization
// vectors, the real stories260K checkpoint, one malformed file per validation rule, sharded
// model directories, float conversion and the atomic writer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/io/safetensors.h"

namespace resq {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// 8-byte little-endian length + header + data, built by hand (independent of the writer).
std::string raw_file(const std::string& header, const std::string& data = "", uint64_t length = UINT64_MAX) {
  const uint64_t n = length == UINT64_MAX ? header.size() : length;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

using test::message_of;  // runs f, expects exception E, returns its message

bool has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Writes `bytes` as a file, opens it, expects FormatError naming the file and each of `needles`.
void expect_open_fails(const std::string& bytes, const std::vector<std::string>& needles) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  test::write_file(path, bytes);
  const std::string msg = message_of<FormatError>([&] { SafetensorsFile::open(path); });
  EXPECT_TRUE(has(msg, path)) << msg;
  for (const std::string& needle : needles) EXPECT_TRUE(has(msg, needle)) << "missing '" << needle << "' in: " << msg;
}

std::vector<uint8_t> random_bytes(size_t n, std::mt19937& rng, DType dtype) {
  std::vector<uint8_t> out(n);
  for (uint8_t& b : out) b = static_cast<uint8_t>(rng());
  if (dtype == DType::BOOL) {
    for (uint8_t& b : out) b &= 1;
  }
  return out;
}

size_t numel_of(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// ------------------------------------------------------------------------------------ basics

TEST(FormatShape, Formats) {
  EXPECT_EQ(format_shape({}), "[]");
  EXPECT_EQ(format_shape({7}), "[7]");
  EXPECT_EQ(format_shape({512, 64, 0}), "[512, 64, 0]");
}

TEST(Safetensors, RoundTripEveryDtypeAndShape) {
  const DType dtypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                          DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {7}, {3, 5}, {2, 0, 4}, {1, 3, 1, 5}};
  std::mt19937 rng(42);
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  for (DType dtype : dtypes) {
    for (size_t s = 0; s < shapes.size(); ++s) {
      const size_t nbytes = numel_of(shapes[s]) * dtype_size(dtype);
      storage.push_back(random_bytes(nbytes, rng, dtype));
      tensors.push_back({"t." + dtype_name(dtype) + "." + std::to_string(s), dtype, shapes[s],
                         storage.back().data(), nbytes});
    }
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode \"q\""}};
  TempDir dir;
  const std::string path = dir.file("all.safetensors");
  write_safetensors(path, tensors, metadata);

  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->metadata(), metadata);
  std::vector<std::string> expected_names;
  for (const auto& t : tensors) expected_names.push_back(t.name);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(file->names(), expected_names);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& view = file->get(tensors[i].name);
    EXPECT_EQ(view.dtype, tensors[i].dtype) << view.name;
    EXPECT_EQ(view.shape, tensors[i].shape) << view.name;
    EXPECT_EQ(view.nbytes, tensors[i].nbytes) << view.name;
    EXPECT_EQ(static_cast<size_t>(view.numel()), numel_of(tensors[i].shape)) << view.name;
    EXPECT_EQ(view.file, path);
    if (view.nbytes) {
      EXPECT_EQ(std::memcmp(view.data, storage[i].data(), view.nbytes), 0) << view.name;
      // The writer's layout keeps every tensor aligned to its element size in the mapping.
      EXPECT_EQ(reinterpret_cast<uintptr_t>(view.data) % dtype_size(view.dtype), 0u) << view.name;
    }
  }
  EXPECT_FALSE(file->contains("t.F32"));
  const std::string msg = message_of<FormatError>([&] { file->get("absent.weight"); });
  EXPECT_TRUE(has(msg, path) && has(msg, "absent.weight")) << msg;
}

// Byte vectors from the HF safetensors crate's own unit tests (tensor.rs: test_serialization,
// test_serialization_forced_alignement, test_empty): our writer must produce the same bytes.
TEST(Safetensors, WriterMatchesHfSerializationVectors) {
  TempDir dir;
  const float values[] = {0.0f, 1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  std::string data(reinterpret_cast<const char*>(values), sizeof values);

  write_safetensors(dir.file("a.safetensors"), {{"attn.0", DType::F32, {1, 2, 3}, values, 24}});
  EXPECT_EQ(test::read_file(dir.file("a.safetensors")),
            raw_file("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}", data));
  ASSERT_EQ(raw_file("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}").size(), 72u);

  write_safetensors(dir.file("b.safetensors"), {{"attn0", DType::F32, {1, 1, 2, 3}, values, 24}});
  EXPECT_EQ(test::read_file(dir.file("b.safetensors")),
            raw_file("{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}       ",
                     data));

  write_safetensors(dir.file("c.safetensors"), {});
  EXPECT_EQ(test::read_file(dir.file("c.safetensors")), raw_file("{}      "));

  write_safetensors(dir.file("d.safetensors"), {}, {{"framework", "pt"}});
  EXPECT_EQ(test::read_file(dir.file("d.safetensors")), raw_file("{\"__metadata__\":{\"framework\":\"pt\"}}     "));
}

// The invariants HF's loader enforces (tensor.rs read_metadata/validate), checked on the raw
// bytes with an independent JSON parse: header padded to 8 and starting with '{', offsets
// contiguous from 0 to the end of the file, every tensor aligned to its element size.
TEST(Safetensors, WriterOutputSatisfiesHfLoaderRules) {
  std::mt19937 rng(7);
  const std::vector<std::pair<DType, std::vector<int64_t>>> specs = {
      {DType::U8, {3}}, {DType::F32, {5, 3}}, {DType::F16, {7}}, {DType::F64, {2}},
      {DType::BOOL, {1}}, {DType::I64, {3}}, {DType::BF16, {3, 3}}, {DType::I16, {0}},
      {DType::I8, {5}}, {DType::I32, {}}};
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < specs.size(); ++i) {
    const size_t nbytes = numel_of(specs[i].second) * dtype_size(specs[i].first);
    storage.push_back(random_bytes(nbytes, rng, specs[i].first));
    tensors.push_back({"z" + std::to_string(specs.size() - i), specs[i].first, specs[i].second,
                       storage.back().data(), nbytes});
  }
  TempDir dir;
  write_safetensors(dir.file("m.safetensors"), tensors, {{"k", "v"}});
  const std::string bytes = test::read_file(dir.file("m.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  std::vector<std::tuple<uint64_t, uint64_t, size_t>> ranges;  // begin, end, element size
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const size_t esize = dtype_size(parse_dtype(it->at("dtype").get<std::string>()));
    ranges.emplace_back(it->at("data_offsets")[0].get<uint64_t>(), it->at("data_offsets")[1].get<uint64_t>(), esize);
  }
  ASSERT_EQ(ranges.size(), tensors.size());
  std::sort(ranges.begin(), ranges.end());
  uint64_t expected_begin = 0;
  size_t previous_esize = 8;
  for (const auto& [begin, end, esize] : ranges) {
    EXPECT_EQ(begin, expected_begin);
    EXPECT_EQ((8 + n + begin) % esize, 0u);
    EXPECT_LE(esize, previous_esize);  // decreasing alignment class
    expected_begin = end;
    previous_esize = esize;
  }
  EXPECT_EQ(8 + n + expected_begin, bytes.size());
}

// ------------------------------------------------------------------------------ real checkpoint

TEST(Safetensors, ReadsStories260K) {
  const std::string path = test::shared_path("models/stories260K/model.safetensors");
  auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->names().size(), 47u);  // embed + norm + 5 layers x 9
  EXPECT_FALSE(file->contains("lm_head.weight"));  // tied embeddings
  EXPECT_EQ(file->metadata().at("format"), "pt");

  const TensorView& embed = file->get("model.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::F32);
  EXPECT_EQ(embed.shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(embed.nbytes, 512u * 64u * 4u);
  const std::vector<float> values = tensor_to_float32_vector(embed);
  ASSERT_EQ(values.size(), 512u * 64u);
  for (float v : values) ASSERT_TRUE(std::isfinite(v));
  // Values read with Python's struct module straight from the file.
  EXPECT_EQ(float_bits(values[0]), 0xbe96e950u);      // -0.29474878
  EXPECT_EQ(float_bits(values[1]), 0x3f0fd864u);      // 0.56189561
  EXPECT_EQ(float_bits(values[32767]), 0xbed91acdu);  // -0.42403260
  const TensorView& down = file->get("model.layers.4.mlp.down_proj.weight");
  EXPECT_EQ(down.shape, (std::vector<int64_t>{64, 172}));
  std::vector<double> down64(static_cast<size_t>(down.numel()));
  tensor_to_float64(down, down64.data());
  EXPECT_EQ(float_bits(static_cast<float>(down64.back())), 0xbb65d38bu);

  TensorStore store = TensorStore::open_model_dir(test::shared_dir() + "/models/stories260K");
  EXPECT_EQ(store.size(), 47u);
  EXPECT_EQ(store.files().size(), 1u);
  const TensorView& norm = store.require("model.norm.weight", {64});
  std::vector<float> norm_values(64);
  tensor_to_float32(norm, norm_values.data());
  EXPECT_EQ(float_bits(norm_values[0]), 0x401d54efu);  // 2.45830894
  const std::string msg =
      message_of<ShapeError>([&] { store.require("model.embed_tokens.weight", {64, 512}); });
  EXPECT_TRUE(has(msg, "model.safetensors: tensor 'model.embed_tokens.weight' has shape [512, 64], "
                       "expected [64, 512]")) << msg;
}

// Every tensor of the real checkpoint survives write -> read byte for byte.
TEST(Safetensors, RewritesStories260KLosslessly) {
  auto original = SafetensorsFile::open(test::shared_path("models/stories260K/model.safetensors"));
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, view] : original->tensors()) {
    tensors.push_back({name, view.dtype, view.shape, view.data, view.nbytes});
  }
  TempDir dir;
  write_safetensors(dir.file("model.safetensors"), tensors, original->metadata());
  auto copy = SafetensorsFile::open(dir.file("model.safetensors"));
  EXPECT_EQ(copy->names(), original->names());
  EXPECT_EQ(copy->metadata(), original->metadata());
  for (const auto& [name, view] : original->tensors()) {
    const TensorView& other = copy->get(name);
    ASSERT_EQ(other.shape, view.shape) << name;
    ASSERT_EQ(other.nbytes, view.nbytes) << name;
    EXPECT_EQ(std::memcmp(other.data, view.data, view.nbytes), 0) << name;
  }
}

// ------------------------------------------------------------------------------ malformed files

const std::string kData8(8, '\x01');

TEST(SafetensorsErrors, FileShorterThanEightBytes) {
  expect_open_fails("", {"0 bytes"});
  expect_open_fails(std::string(5, '\0'), {"5 bytes"});
}

TEST(SafetensorsErrors, HeaderLengthBeyondFile) {
  expect_open_fails(raw_file("{}", "", 1000), {"header length 1000", "only 2 bytes"});
}

TEST(SafetensorsErrors, HeaderLengthOverCap) {
  expect_open_fails(raw_file("{}", "", 200'000'000), {"header length 200000000", "limit"});
  expect_open_fails(raw_file("{}", "", UINT64_MAX - 1), {"limit"});
}

TEST(SafetensorsErrors, HeaderNotJsonOrNotObject) {
  expect_open_fails(raw_file("{\"w\": {\"dtype\": \"F32\","), {"invalid JSON"});
  expect_open_fails(raw_file(std::string("{}\0\0", 4)), {"invalid JSON", "NUL byte at offset 2"});
  expect_open_fails(raw_file(std::string("{}\0{\"x\":1}", 10)), {"NUL byte"});  // padding must be spaces
  expect_open_fails(raw_file(""), {"invalid JSON"});
  expect_open_fails(raw_file("[1, 2]"), {"must be a JSON object", "array"});
  expect_open_fails(raw_file("{\"n\": \"\xff\xfe\"}"), {"invalid JSON"});  // invalid UTF-8
}

// Issue 19, defect 1: a shape of 100,000 nested arrays (a 200 KB header) parsed, then overflowed
// the stack when parse_entry dumped it into the message. The parser refuses it, naming the entry.
TEST(SafetensorsErrors, DeeplyNestedShapeIsRefused) {
  const size_t n = 100000;
  const std::string shape = std::string(n, '[') + std::string(n, ']');
  expect_open_fails(raw_file("{" + entry("w", "F32", shape, 0, 4) + "}", kData8),
                    {": header: invalid JSON at 'w.shape[0][0]", "nested deeper than 128 levels"});
  // Within the limit, a nested shape is a plain type error with a short excerpt of the value.
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  const std::string msg = message_of<FormatError>([&] {
    TempDir dir;
    test::write_file(dir.file("x.safetensors"), raw_file("{" + entry("w", "F32", deep, 0, 4) + "}", kData8));
    SafetensorsFile::open(dir.file("x.safetensors"));
  });
  EXPECT_TRUE(has(msg, "non-integer dimension")) << msg;
  EXPECT_LT(msg.size(), 400u) << msg;
}

// Issue 19, defect 2: numbers beyond double and a repeated key name the entry and the field.
TEST(SafetensorsErrors, NumberOverflowNamesTheField) {
  expect_open_fails(raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4e999]}}", kData8),
                    {"invalid JSON at 'w.data_offsets[1]': number overflow parsing '4e999'"});
  expect_open_fails(raw_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[2],\"data_offsets\":[0,4]}}", kData8),
                    {"the key 'shape' appears more than once in 'w'"});
}

TEST(SafetensorsErrors, DuplicateTensorKey) {
  expect_open_fails(raw_file("{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}", kData8),
                    {"'w'", "more than once"});
}

TEST(SafetensorsErrors, EntryNotAnObject) {
  expect_open_fails(raw_file("{\"layer.w\": 5}"), {"'layer.w'", "JSON object", "number"});
}

TEST(SafetensorsErrors, EntryMissingField) {
  const std::string full = "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]";
  for (const std::string field : {"dtype", "shape", "data_offsets"}) {
    // Remove one field from the entry.
    std::string fields = full;
    const size_t at = fields.find("\"" + field + "\"");
    size_t stop = fields.find(",\"", at + 1);
    fields.erase(at, stop == std::string::npos ? std::string::npos : stop - at + 1);
    if (!fields.empty() && fields.back() == ',') fields.pop_back();
    expect_open_fails(raw_file("{\"my.tensor\":{" + fields + "}}", kData8), {"'my.tensor'", "no \"" + field + "\""});
  }
}

TEST(SafetensorsErrors, EntryFieldsOfWrongJsonType) {
  const auto bad = [](const std::string& dtype, const std::string& shape, const std::string& offsets) {
    return raw_file("{\"x.w\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}}",
                    kData8);
  };
  expect_open_fails(bad("32", "[2]", "[0,8]"), {"'x.w'", "\"dtype\" must be a string"});
  expect_open_fails(bad("\"F32\"", "\"2\"", "[0,8]"), {"'x.w'", "\"shape\" must be an array"});
  expect_open_fails(bad("\"F32\"", "[2.0]", "[0,8]"), {"'x.w'", "non-integer dimension"});
  expect_open_fails(bad("\"F32\"", "[2]", "[0]"), {"'x.w'", "\"data_offsets\" must be [begin, end]"});
  expect_open_fails(bad("\"F32\"", "[2]", "[\"0\",\"8\"]"), {"'x.w'", "\"data_offsets\""});
  expect_open_fails(bad("\"F32\"", "[2]", "[-8,0]"), {"'x.w'", "\"data_offsets\""});
  expect_open_fails(bad("\"F32\"", "[2]", "{\"a\":0}"), {"'x.w'", "\"data_offsets\""});
}

TEST(SafetensorsErrors, UnknownDtype) {
  expect_open_fails(raw_file("{" + entry("q.w", "F8_E4M3", "[8]", 0, 8) + "}", kData8),
                    {"'q.w'", "unknown dtype 'F8_E4M3'"});
}

TEST(SafetensorsErrors, NegativeDimension) {
  expect_open_fails(raw_file("{" + entry("neg.w", "U8", "[-1,8]", 0, 8) + "}", kData8),
                    {"'neg.w'", "negative dimension -1"});
}

TEST(SafetensorsErrors, ShapeProductOverflow) {
  expect_open_fails(raw_file("{" + entry("big.w", "U8", "[4294967296,4294967296,0]", 0, 0) + "}"),
                    {"'big.w'", "overflows"});
  expect_open_fails(raw_file("{" + entry("big.w", "F64", "[4611686018427387904]", 0, 8) + "}", kData8),
                    {"'big.w'", "overflows"});
  expect_open_fails(raw_file("{" + entry("big.w", "U8", "[18446744073709551615]", 0, 8) + "}", kData8),
                    {"'big.w'", "overflows"});
}

TEST(SafetensorsErrors, EndBeforeBegin) {
  expect_open_fails(raw_file("{" + entry("r.w", "U8", "[0]", 8, 4) + "}", kData8), {"'r.w'", "end < begin"});
}

TEST(SafetensorsErrors, EndBeyondDataBuffer) {
  expect_open_fails(raw_file("{" + entry("r.w", "F32", "[4]", 0, 16) + "}", kData8),
                    {"'r.w'", "[0, 16]", "beyond the data buffer of 8 bytes"});
}

TEST(SafetensorsErrors, TruncatedFile) {
  TempDir dir;
  const std::vector<float> values(10, 1.5f);
  write_safetensors(dir.file("full.safetensors"), {{"emb.w", DType::F32, {2, 5}, values.data(), 40}});
  const std::string bytes = test::read_file(dir.file("full.safetensors"));
  expect_open_fails(bytes.substr(0, bytes.size() - 3), {"'emb.w'", "beyond the data buffer of 37 bytes"});
}

TEST(SafetensorsErrors, ByteSizeMismatch) {
  expect_open_fails(raw_file("{" + entry("s.w", "F32", "[2]", 0, 6) + "}", kData8),
                    {"'s.w'", "6 bytes, expected 8", "F32 x [2]"});
}

TEST(SafetensorsErrors, OverlappingRanges) {
  const std::string data(12, '\0');
  expect_open_fails(raw_file("{" + entry("a.w", "F32", "[2]", 0, 8) + "," + entry("b.w", "F32", "[2]", 4, 12) + "}", data),
                    {"'a.w'", "'b.w'", "overlap"});
  // Identical ranges overlap too.
  expect_open_fails(raw_file("{" + entry("a.w", "F32", "[2]", 0, 8) + "," + entry("c.w", "I32", "[2]", 0, 8) + "}", kData8),
                    {"'a.w'", "'c.w'", "overlap"});
}

TEST(SafetensorsErrors, MetadataValuesMustBeStrings) {
  expect_open_fails(raw_file("{\"__metadata__\":{\"format\":\"pt\",\"step\":1}}"), {"__metadata__", "'step'"});
  expect_open_fails(raw_file("{\"__metadata__\":[\"pt\"]}"), {"__metadata__", "array"});
}

TEST(Safetensors, AcceptsEmptyTensorsGapsAndNullMetadata) {
  TempDir dir;
  // An empty tensor, a 4-byte gap (other writers may align) and "__metadata__": null.
  const std::string header = "{\"__metadata__\":null," + entry("e.w", "F32", "[0,3]", 0, 0) + "," +
                             entry("v.w", "I32", "[1]", 4, 8) + "}";
  const std::string data = std::string(4, '\0') + std::string("\x2a\0\0\0", 4);
  test::write_file(dir.file("ok.safetensors"), raw_file(header, data));
  auto file = SafetensorsFile::open(dir.file("ok.safetensors"));
  EXPECT_TRUE(file->metadata().empty());
  EXPECT_EQ(file->get("e.w").numel(), 0);
  EXPECT_EQ(file->get("e.w").nbytes, 0u);
  int32_t v;
  std::memcpy(&v, file->get("v.w").data, 4);
  EXPECT_EQ(v, 42);
}

TEST(SafetensorsErrors, MissingFileIsIoError) {
  TempDir dir;
  const std::string msg = message_of<IoError>([&] { SafetensorsFile::open(dir.file("nope.safetensors")); });
  EXPECT_TRUE(has(msg, "nope.safetensors")) << msg;
  const std::string msg2 = message_of<IoError>([&] { SafetensorsFile::open(dir.path()); });
  EXPECT_TRUE(has(msg2, dir.path())) << msg2;
}

// ------------------------------------------------------------------------------ TensorStore

// Writes one small F32 tensor per name into `path`; values encode the name index for checks.
void write_shard(const std::string& path, const std::vector<std::string>& names, float base) {
  std::vector<std::vector<float>> values;
  std::vector<TensorToWrite> tensors;
  values.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    values.push_back({base + static_cast<float>(i), -1.0f, 0.5f});
    tensors.push_back({names[i], DType::F32, {3}, values.back().data(), 12});
  }
  write_safetensors(path, tensors);
}

void write_index(const std::string& dir, const nlohmann::json& weight_map) {
  test::write_file(dir + "/model.safetensors.index.json",
                   nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump(2));
}

TEST(TensorStore, ShardedDirectoryRoundTrip) {
  TempDir dir;
  write_shard(dir.file("model-00001-of-00002.safetensors"), {"a.weight", "b.weight"}, 10.0f);
  // A 2-D BF16 tensor in the second shard, ragged shape.
  const std::vector<uint16_t> bf = {0x3f80, 0xc000, 0x4040, 0x0000, 0x3f00};  // 1, -2, 3, 0, 0.5
  write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                    {{"c.weight", DType::BF16, {1, 5}, bf.data(), 10}});
  write_index(dir.path(), {{"a.weight", "model-00001-of-00002.safetensors"},
                           {"b.weight", "model-00001-of-00002.safetensors"},
                           {"c.weight", "model-00002-of-00002.safetensors"}});
  TensorStore store = TensorStore::open_model_dir(dir.path());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a.weight", "b.weight", "c.weight"}));
  EXPECT_EQ(store.files().size(), 2u);
  EXPECT_EQ(store.source(), dir.path());
  EXPECT_TRUE(store.contains("b.weight"));
  EXPECT_FALSE(store.contains("d.weight"));
  EXPECT_EQ(tensor_to_float32_vector(store.get("b.weight")), (std::vector<float>{11.0f, -1.0f, 0.5f}));
  const TensorView& c = store.require("c.weight", {1, 5});
  EXPECT_TRUE(has(c.file, "model-00002-of-00002.safetensors"));
  EXPECT_EQ(tensor_to_float32_vector(c), (std::vector<float>{1.0f, -2.0f, 3.0f, 0.0f, 0.5f}));

  // A copy of the store stays valid after the original is gone.
  std::unique_ptr<TensorStore> original = std::make_unique<TensorStore>(TensorStore::open_model_dir(dir.path()));
  TensorStore copy = *original;
  original.reset();
  EXPECT_EQ(tensor_to_float32_vector(copy.get("a.weight")), (std::vector<float>{10.0f, -1.0f, 0.5f}));

  const std::string msg = message_of<FormatError>([&] { store.get("d.weight"); });
  EXPECT_TRUE(has(msg, dir.path() + ": tensor 'd.weight' not found")) << msg;
  const std::string shape_msg = message_of<ShapeError>([&] { store.require("c.weight", {5}); });
  EXPECT_TRUE(has(shape_msg, "model-00002-of-00002.safetensors: tensor 'c.weight' has shape [1, 5], expected [5]"))
      << shape_msg;
}

TEST(TensorStore, SingleFileDirectoryAndMissingFiles) {
  TempDir dir;
  const std::string msg = message_of<IoError>([&] { TensorStore::open_model_dir(dir.path()); });
  EXPECT_TRUE(has(msg, "no model.safetensors or model.safetensors.index.json in " + dir.path())) << msg;
  write_shard(dir.file("model.safetensors"), {"only.weight"}, 3.0f);
  TensorStore store = TensorStore::open_model_dir(dir.path());
  EXPECT_EQ(store.names(), std::vector<std::string>{"only.weight"});
}

TEST(TensorStore, ShardInSubdirectoryIsAllowed) {
  TempDir dir;
  fs::create_directories(dir.file("weights"));
  write_shard(dir.file("weights/part.safetensors"), {"w"}, 1.0f);
  write_index(dir.path(), {{"w", "weights/part.safetensors"}});
  EXPECT_EQ(TensorStore::open_model_dir(dir.path()).size(), 1u);
}

TEST(TensorStore, RejectsShardPathsEscapingTheDirectory) {
  TempDir outer;
  const std::string model_dir = outer.file("model");
  fs::create_directories(model_dir);
  // Valid files exist at the escaping targets, so only the path rule can reject them.
  write_shard(outer.file("x.safetensors"), {"evil.weight"}, 0.0f);
  for (const std::string& shard : {std::string("../x.safetensors"), outer.file("x.safetensors"),
                                  std::string("sub/../../x.safetensors"), std::string("./x.safetensors"),
                                  std::string("a//x.safetensors"), std::string("")}) {
    write_index(model_dir, {{"evil.weight", shard}});
    const std::string msg = message_of<FormatError>([&] { TensorStore::open_model_dir(model_dir); });
    EXPECT_TRUE(has(msg, "model.safetensors.index.json")) << msg;
    EXPECT_TRUE(has(msg, "'evil.weight'")) << msg;
    EXPECT_TRUE(has(msg, "'" + shard + "'")) << msg;
  }
}

TEST(TensorStore, IndexNamingMissingShard) {
  TempDir dir;
  write_shard(dir.file("s1.safetensors"), {"a"}, 0.0f);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  const std::string msg = message_of<IoError>([&] { TensorStore::open_model_dir(dir.path()); });
  EXPECT_TRUE(has(msg, "model.safetensors.index.json") && has(msg, "'s2.safetensors'") && has(msg, "'b'")) << msg;
}

TEST(TensorStore, IndexTensorAbsentFromItsShard) {
  TempDir dir;
  write_shard(dir.file("s1.safetensors"), {"a"}, 0.0f);
  write_shard(dir.file("s2.safetensors"), {"b"}, 0.0f);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}});
  const std::string msg = message_of<FormatError>([&] { TensorStore::open_model_dir(dir.path()); });
  EXPECT_TRUE(has(msg, "tensor 'b' is mapped to shard 's1.safetensors'") && has(msg, "does not contain it")) << msg;
}

TEST(TensorStore, DuplicateTensorAcrossShards) {
  TempDir dir;
  write_shard(dir.file("s1.safetensors"), {"a", "dup.weight"}, 0.0f);
  write_shard(dir.file("s2.safetensors"), {"b", "dup.weight"}, 0.0f);
  write_index(dir.path(), {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"dup.weight", "s2.safetensors"}});
  const std::string msg = message_of<FormatError>([&] { TensorStore::open_model_dir(dir.path()); });
  EXPECT_TRUE(has(msg, "'dup.weight'") && has(msg, "s1.safetensors") && has(msg, "s2.safetensors")) << msg;

  const std::string msg2 = message_of<FormatError>(
      [&] { TensorStore::open_files({dir.file("s1.safetensors"), dir.file("s2.safetensors")}); });
  EXPECT_TRUE(has(msg2, "'dup.weight'") && has(msg2, "appears in both")) << msg2;
}

TEST(TensorStore, MalformedIndex) {
  TempDir dir;
  write_shard(dir.file("s1.safetensors"), {"a"}, 0.0f);
  const std::string index = dir.file("model.safetensors.index.json");
  const auto fails_with = [&](const std::string& text, const std::string& needle) {
    test::write_file(index, text);
    const std::string msg = message_of<FormatError>([&] { TensorStore::open_model_dir(dir.path()); });
    EXPECT_TRUE(has(msg, index) && has(msg, needle)) << "text: " << text << "\nmessage: " << msg;
  };
  fails_with("{\"weight_map\": {\"a\": ", "invalid JSON");
  fails_with("{\"metadata\": {}}", "\"weight_map\"");
  fails_with("{\"weight_map\": [\"s1.safetensors\"]}", "\"weight_map\"");
  fails_with("{\"weight_map\": {}}", "empty");
  fails_with("{\"weight_map\": {\"a\": 1}}", "'a'");
  fails_with("{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}", "more than once");
}

TEST(TensorStore, OpenFilesUnion) {
  TempDir dir;
  write_shard(dir.file("p.safetensors"), {"p1", "p2"}, 0.0f);
  write_shard(dir.file("q.safetensors"), {"q1"}, 5.0f);
  TensorStore store = TensorStore::open_files({dir.file("p.safetensors"), dir.file("q.safetensors")});
  EXPECT_EQ(store.names(), (std::vector<std::string>{"p1", "p2", "q1"}));
  EXPECT_EQ(store.source(), dir.file("p.safetensors") + ", " + dir.file("q.safetensors"));
  EXPECT_EQ(tensor_to_float32_vector(store.get("q1"))[0], 5.0f);
}

// ------------------------------------------------------------------------------ conversion

TEST(Conversion, FloatDtypesToFloat32AndFloat64) {
  TempDir dir;
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00, 0x3555};
  const std::vector<uint16_t> b16 = {0x3f80, 0xc0a0, 0x0001};
  const std::vector<double> f64 = {0.1, -1e300, 3.0};
  const std::vector<float> f32 = {1.25f, -0.0f};
  const std::vector<int32_t> i32 = {1, 2};
  write_safetensors(dir.file("c.safetensors"), {{"h", DType::F16, {7}, f16.data(), 14},
                                                {"b", DType::BF16, {3}, b16.data(), 6},
                                                {"d", DType::F64, {3, 1}, f64.data(), 24},
                                                {"f", DType::F32, {2}, f32.data(), 8},
                                                {"i", DType::I32, {2}, i32.data(), 8}});
  auto file = SafetensorsFile::open(dir.file("c.safetensors"));
  const std::vector<float> h = tensor_to_float32_vector(file->get("h"));
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], 65504.0f);
  EXPECT_EQ(h[3], std::ldexp(1.0f, -24));
  EXPECT_TRUE(h[4] == 0.0f && std::signbit(h[4]));
  EXPECT_TRUE(std::isinf(h[5]));
  EXPECT_EQ(h[6], 1365.0f / 4096.0f);  // 0x3555: (1 + 341/1024) / 4
  EXPECT_EQ(tensor_to_float32_vector(file->get("b")), (std::vector<float>{1.0f, -5.0f, std::ldexp(1.0f, -133)}));
  const std::vector<float> d = tensor_to_float32_vector(file->get("d"));
  EXPECT_EQ(d[0], 0.1f);
  EXPECT_TRUE(std::isinf(d[1]) && d[1] < 0);
  std::vector<double> d64(3);
  tensor_to_float64(file->get("d"), d64.data());
  EXPECT_EQ(d64, f64);
  std::vector<double> f64_of_f32(2);
  tensor_to_float64(file->get("f"), f64_of_f32.data());
  EXPECT_EQ(f64_of_f32[0], 1.25);
  EXPECT_TRUE(std::signbit(f64_of_f32[1]));
  std::vector<double> h64(7);
  tensor_to_float64(file->get("h"), h64.data());
  EXPECT_EQ(h64[3], std::ldexp(1.0, -24));

  std::vector<float> out(2);
  const std::string msg = message_of<ShapeError>([&] { tensor_to_float32(file->get("i"), out.data()); });
  EXPECT_TRUE(has(msg, "c.safetensors") && has(msg, "'i'") && has(msg, "I32")) << msg;
  std::vector<double> out64(2);
  EXPECT_THROW(tensor_to_float64(file->get("i"), out64.data()), ShapeError);
}

TEST(Conversion, UnalignedAndInconsistentViews) {
  // A hand-built view at an odd address (files from other writers need not be aligned).
  const float values[] = {3.5f, -7.25f, 1e-3f};
  std::vector<uint8_t> buffer(1 + sizeof values);
  std::memcpy(buffer.data() + 1, values, sizeof values);
  TensorView view{"odd", DType::F32, {3}, buffer.data() + 1, sizeof values, "mem"};
  EXPECT_EQ(tensor_to_float32_vector(view), (std::vector<float>{3.5f, -7.25f, 1e-3f}));
  std::vector<double> d(3);
  tensor_to_float64(view, d.data());
  EXPECT_EQ(d[1], -7.25);

  view.nbytes = 8;  // disagrees with F32 x [3]
  const std::string msg = message_of<ShapeError>([&] { tensor_to_float32_vector(view); });
  EXPECT_TRUE(has(msg, "'odd'") && has(msg, "8 bytes, expected 12")) << msg;

  // Issue 19 (bounded dimensions): a shape whose product overflows int64 is a ShapeError, not
  // signed overflow in numel() (UBSan under scripts/test-asan.sh).
  view.shape = {int64_t{1} << 40, int64_t{1} << 40};
  const std::string overflow = message_of<ShapeError>([&] { tensor_to_float32_vector(view); });
  EXPECT_TRUE(has(overflow, "'odd'") && has(overflow, "more than 2^63 elements")) << overflow;
  view.shape = {3, -1};
  EXPECT_THROW(view.numel(), ShapeError);
}

// ------------------------------------------------------------------------------ writer errors

TEST(Writer, ValidationFailuresLeaveNoFile) {
  TempDir dir;
  const std::string path = dir.file("out.safetensors");
  const std::vector<float> v(6, 1.0f);
  const auto fails = [&](const std::vector<TensorToWrite>& tensors, const std::string& needle) {
    const std::string msg = message_of<UsageError>([&] { write_safetensors(path, tensors); });
    EXPECT_TRUE(has(msg, path) && has(msg, needle)) << msg;
    EXPECT_TRUE(test::directory_entries(dir.path()).empty());
  };
  fails({{"w", DType::F32, {2, 3}, v.data(), 20}}, "nbytes is 20, expected 24");
  fails({{"w", DType::F16, {2, 3}, v.data(), 24}}, "expected 12");
  fails({{"w", DType::F32, {6}, v.data(), 24}, {"w", DType::F32, {6}, v.data(), 24}}, "more than once");
  fails({{"__metadata__", DType::F32, {6}, v.data(), 24}}, "reserved");
  fails({{"", DType::F32, {6}, v.data(), 24}}, "empty name");
  fails({{"w", DType::F32, {-2, -3}, v.data(), 24}}, "negative dimension");
  fails({{"w", DType::F32, {6}, nullptr, 24}}, "data is null");
  fails({{"w\xff", DType::F32, {6}, v.data(), 24}}, "UTF-8");
}

TEST(Writer, ReplacesExistingFileAndCleansUpOnFailure) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const std::vector<float> a = {1.0f}, b = {2.0f, 3.0f};
  write_safetensors(path, {{"x", DType::F32, {1}, a.data(), 4}});
  write_safetensors(path, {{"y", DType::F32, {2}, b.data(), 8}});
  EXPECT_EQ(SafetensorsFile::open(path)->names(), std::vector<std::string>{"y"});
  EXPECT_EQ(test::directory_entries(dir.path()), std::vector<std::string>{"m.safetensors"});

  // Renaming onto a directory fails after the temporary file was written: it must be removed.
  const std::string blocked = dir.file("blocked");
  fs::create_directories(blocked + "/inner");
  const std::string msg = message_of<IoError>([&] { write_safetensors(blocked, {{"x", DType::F32, {1}, a.data(), 4}}); });
  EXPECT_TRUE(has(msg, blocked)) << msg;
  EXPECT_EQ(test::directory_entries(dir.path()), (std::vector<std::string>{"blocked", "m.safetensors"}));
  EXPECT_TRUE(fs::is_directory(blocked + "/inner"));

  // A missing parent directory: nothing can be created.
  const std::string msg2 = message_of<IoError>([&] { write_safetensors(dir.file("no/such/dir/x.safetensors"), {}); });
  EXPECT_TRUE(has(msg2, "no/such/dir/x.safetensors")) << msg2;
}

}  // namespace
}  // namespace resq
