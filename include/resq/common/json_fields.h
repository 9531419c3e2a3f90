// Strict reading of JSON objects: typed getters with ranges, optional fields and unknown-key
// detection, whose errors name the file and the key path. The one field reader of resq's loaders.
//
// Every message has the form  SOURCE: 'KEY.PATH' must be ..., got VALUE  so the user sees which
// file, which field and what was wrong:
//   config.json: 'num_attention_heads' must be an integer >= 1, got "x"
//   configs/resq.json: 'weights.clip_ratio' must be a number in (0, 1], got 1.5
//   configs/resq.json: 'rotation' missing (must be an object)
//   configs/resq.json: unknown key 'weights.bitz'
//   tokenizer.json: 'post_processor.processors[1].type' must be a string, got 3
// Keys that are not plain words are quoted in the path: 'special_tokens["<s>"].ids'.
//
// Example (a checkpoint's metadata: FormatError on any problem, unknown keys refused; read_file is
// resq/common/file.h):
//
//   const nlohmann::json j = parse_json(read_file(path), path, JsonErrorKind::kFormat);
//   JsonFields meta(j, path, {JsonErrorKind::kFormat});
//   const int64_t r = meta.integer("r", IntRange::between(0, hidden_size));
//   JsonFields kv = meta.object("kv_cache");
//   const double clip = kv.number("k_clip_ratio", NumberRange::open_closed(0, 1));
//   const bool on = kv.optional_boolean("enabled").value_or(true);
//   if (clip < 0.5 && on) kv.fail("k_clip_ratio", "must be >= 0.5 when enabled");
//   kv.reject_unknown_keys();
//   meta.reject_unknown_keys();
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace resq {

// Which typed exception (resq/common/error.h) a reader throws: ConfigError for files people write
// (recipes, config.json, tokenizer.json), FormatError for files resq writes and reads back.
enum class JsonErrorKind { kConfig, kFormat };

struct JsonReadOptions {
  JsonErrorKind error = JsonErrorKind::kConfig;
  // HuggingFace files write `"key": null` for "not set": with this on, a null field counts as
  // absent (optional getters give nullopt, required ones say it is missing).
  bool null_is_absent = false;
};

// Allowed integers: the closed range [lo, hi].
struct IntRange {
  int64_t lo = std::numeric_limits<int64_t>::min();
  int64_t hi = std::numeric_limits<int64_t>::max();

  static IntRange any() { return {}; }
  static IntRange at_least(int64_t lo) { return {lo, std::numeric_limits<int64_t>::max()}; }
  static IntRange positive() { return at_least(1); }
  static IntRange between(int64_t lo, int64_t hi) { return {lo, hi}; }
  bool contains(int64_t v) const { return v >= lo && v <= hi; }
  // What the field must be: "an integer", "an integer >= 1", "an integer in [2, 16]".
  std::string describe() const;
};

// Allowed numbers: an interval whose ends are open, closed or unbounded (infinite).
struct NumberRange {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;

  static NumberRange any() { return {}; }
  static NumberRange at_least(double lo) { return {lo, any().hi, false, false}; }
  static NumberRange greater_than(double lo) { return {lo, any().hi, true, false}; }
  static NumberRange closed(double lo, double hi) { return {lo, hi, false, false}; }          // [lo, hi]
  static NumberRange closed_open(double lo, double hi) { return {lo, hi, false, true}; }      // [lo, hi)
  static NumberRange open_closed(double lo, double hi) { return {lo, hi, true, false}; }      // (lo, hi]
  static NumberRange open(double lo, double hi) { return {lo, hi, true, true}; }              // (lo, hi)
  bool contains(double v) const;
  // What the field must be: "a number", "a number > 0", "a number in [0, 1)".
  std::string describe() const;
};

// Deepest nesting of arrays and objects accepted: serde_json's limit, so every file HF's Rust
// libraries (safetensors, tokenizers) write or read fits. nlohmann's dump, copy and == recurse once
// per level: without a limit a 200 KB file of '[' overflows the stack.
constexpr size_t kMaxJsonDepth = 128;

struct JsonParseOptions {
  JsonErrorKind error = JsonErrorKind::kConfig;
  // A key twice in one object is an error (else the last one wins, as in Python and nlohmann).
  bool unique_keys = false;
};

// The one entry to nlohmann's parser: every JSON file resq reads goes through it. It refuses raw NUL
// bytes (nlohmann would stop there as if the input ended), nesting deeper than kMaxJsonDepth and,
// with unique_keys, repeated keys; syntax errors, number overflow (1e400) and any nlohmann
// exception raised by `sax` become the options' error kind, naming the source and where the parser
// was: "config.json: invalid JSON at 'rope_scaling.factor': number overflow parsing '1e400'".
void sax_parse_json(std::string_view text, const std::string& source,
                    nlohmann::json_sax<nlohmann::json>& sax, JsonParseOptions options = {});

// Parses JSON text into a value through sax_parse_json: "SOURCE: invalid JSON...: ..." on error.
nlohmann::json parse_json(std::string_view text, const std::string& source, JsonParseOptions options);
inline nlohmann::json parse_json(std::string_view text, const std::string& source,
                                 JsonErrorKind error = JsonErrorKind::kConfig) {
  return parse_json(text, source, JsonParseOptions{error});
}

// A value for messages: compact JSON, cut to 80 characters ("...") so a huge array stays readable.
std::string json_excerpt(const nlohmann::json& value);

// Reads the fields of one JSON object. Getters take a key of this object; the required ones throw
// when it is missing, the optional_* ones give nullopt. Both throw when the value has the wrong
// type or is out of range. Every key a getter (or find) asks for counts as known, so that
// reject_unknown_keys() can refuse the rest (a misspelled field must not be silently ignored).
// The reader refers to the JSON it reads: that must outlive it.
class JsonFields {
 public:
  // `object` must be a JSON object (else it throws). `source` names the file; `path` is where the
  // object sits in it ("" = the top level, "weights", "model.merges[3]").
  JsonFields(const nlohmann::json& object, std::string source, JsonReadOptions options = {},
             std::string path = "");

  const std::string& source() const { return source_; }
  const std::string& path() const { return path_; }
  const JsonReadOptions& options() const { return options_; }
  // Path of a key of this object, unquoted: "weights.bits_low", "special_tokens[\"<s>\"]".
  std::string key_path(const std::string& key) const;
  // "SOURCE: PATH.key" (or "SOURCE: PATH" for the object itself), to begin a message of one's own,
  // e.g. an UnsupportedError: throw UnsupportedError(in.where("type") + " 'X' is not supported").
  std::string where(const std::string& key = "") const;
  // The object itself.
  const nlohmann::json& raw() const { return *object_; }

  // Throws this reader's exception kind: "SOURCE: 'PATH.key' WHAT", or about the object itself.
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;
  [[noreturn]] void fail(const std::string& what) const;

  // True when `key` is present (and not null, with null_is_absent). Does not mark it known.
  bool has(const std::string& key) const;
  // The raw value of `key` for what the typed getters do not cover (nullptr when absent); marks
  // the key known.
  const nlohmann::json* find(const std::string& key) const;
  // The raw value of a required key, any type.
  const nlohmann::json& value(const std::string& key) const;

  std::string string(const std::string& key) const;
  std::optional<std::string> optional_string(const std::string& key) const;
  // A string that must be one of `allowed` (the message lists them).
  std::string one_of(const std::string& key, std::initializer_list<const char*> allowed) const;
  std::optional<std::string> optional_one_of(const std::string& key,
                                             std::initializer_list<const char*> allowed) const;
  bool boolean(const std::string& key) const;
  std::optional<bool> optional_boolean(const std::string& key) const;
  // JSON integers only: 4.0 and "4" are refused.
  int64_t integer(const std::string& key, IntRange range = {}) const;
  std::optional<int64_t> optional_integer(const std::string& key, IntRange range = {}) const;
  // Any JSON number.
  double number(const std::string& key, NumberRange range = {}) const;
  std::optional<double> optional_number(const std::string& key, NumberRange range = {}) const;
  // A reader of the nested object `key` (its messages say 'key.field').
  JsonFields object(const std::string& key) const;
  std::optional<JsonFields> optional_object(const std::string& key) const;
  // The array `key`; its elements are the caller's to read (nested() makes readers of them).
  const nlohmann::json& array(const std::string& key) const;
  const nlohmann::json* optional_array(const std::string& key) const;
  // Readers of the array `key`'s elements, which must all be objects: 'key[i].field'.
  std::vector<JsonFields> objects(const std::string& key) const;
  // A reader of `object`, found at `relative` below this object (e.g. "pieces[2].SpecialToken").
  JsonFields nested(const nlohmann::json& object, const std::string& relative) const;

  // Throws "SOURCE: unknown key 'PATH.key'" for the first key (in the object's order) that no
  // getter asked for.
  void reject_unknown_keys() const;

 private:
  // has(key), marking the key known.
  bool present(const std::string& key) const;
  const nlohmann::json& require(const std::string& key, const std::string& expected) const;
  [[noreturn]] void type_error(const std::string& key, const std::string& expected,
                               const nlohmann::json& got) const;
  [[noreturn]] void throw_error(const std::string& message) const;

  const nlohmann::json* object_;
  std::string source_;
  JsonReadOptions options_;
  std::string path_;
  mutable std::set<std::string> known_;
};

}  // namespace resq
