// The strict JSON field reader: type and range checks, key paths and the messages that name them.
#include "resq/common/json_fields.h"

#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "resq/common/error.h"

namespace resq {
namespace {

using nlohmann::json;

[[noreturn]] void throw_kind(JsonErrorKind kind, const std::string& message) {
  if (kind == JsonErrorKind::kFormat) throw FormatError(message);
  throw ConfigError(message);
}

// Shortest text that reads back as `v` (0 -> "0", 0.125 -> "0.125", 1e-06 -> "1e-06").
std::string number_text(double v) {
  char buffer[32];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", precision, v);
    if (std::strtod(buffer, nullptr) == v) break;
  }
  return buffer;
}

// Keys that read unambiguously after a dot; anything else is quoted as JSON: x["<s>"].
bool is_plain_key(const std::string& key) {
  if (key.empty()) return false;
  for (char c : key) {
    const bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-';
    if (!word) return false;
  }
  return true;
}

std::string quoted_list(std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) list += (list.empty() ? "\"" : ", \"") + std::string(a) + "\"";
  return list;
}

}  // namespace

// ---------------------------------------------------------------- ranges

std::string IntRange::describe() const {
  constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (lo == kMin && hi == kMax) return "an integer";
  if (hi == kMax) return "an integer >= " + std::to_string(lo);
  if (lo == kMin) return "an integer <= " + std::to_string(hi);
  return "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
}

bool NumberRange::contains(double v) const {
  const bool above = lo_open ? v > lo : v >= lo;
  const bool below = hi_open ? v < hi : v <= hi;
  return above && below;  // NaN is in no range
}

std::string NumberRange::describe() const {
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (!has_lo && !has_hi) return "a number";
  if (!has_hi) return std::string("a number ") + (lo_open ? "> " : ">= ") + number_text(lo);
  if (!has_lo) return std::string("a number ") + (hi_open ? "< " : "<= ") + number_text(hi);
  return std::string("a number in ") + (lo_open ? "(" : "[") + number_text(lo) + ", " +
         number_text(hi) + (hi_open ? ")" : "]");
}

// ---------------------------------------------------------------- parsing

json parse_json(const std::string& text, const std::string& source, JsonErrorKind error) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number overflow
    throw_kind(error, source + ": invalid JSON: " + e.what());
  }
}

std::string json_excerpt(const json& value) {
  // Replace, not throw, on invalid UTF-8 in strings: the message must still be made.
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// ---------------------------------------------------------------- JsonFields

JsonFields::JsonFields(const json& object, std::string source, JsonReadOptions options,
                       std::string path)
    : object_(&object), source_(std::move(source)), options_(options), path_(std::move(path)) {
  if (!object.is_object()) fail("must be an object, got " + json_excerpt(object));
}

std::string JsonFields::key_path(const std::string& key) const {
  if (!is_plain_key(key)) return path_ + "[" + json_excerpt(json(key)) + "]";
  return path_.empty() ? key : path_ + "." + key;
}

std::string JsonFields::where(const std::string& key) const {
  const std::string path = key.empty() ? path_ : key_path(key);
  return path.empty() ? source_ : source_ + ": " + path;
}

void JsonFields::throw_error(const std::string& message) const { throw_kind(options_.error, message); }

void JsonFields::fail(const std::string& key, const std::string& what) const {
  throw_error(source_ + ": '" + key_path(key) + "' " + what);
}

void JsonFields::fail(const std::string& what) const {
  throw_error(source_ + ": " + (path_.empty() ? std::string("the top level") : "'" + path_ + "'") +
              " " + what);
}

void JsonFields::type_error(const std::string& key, const std::string& expected,
                            const json& got) const {
  fail(key, "must be " + expected + ", got " + json_excerpt(got));
}

bool JsonFields::has(const std::string& key) const {
  auto it = object_->find(key);
  return it != object_->end() && !(options_.null_is_absent && it->is_null());
}

const json* JsonFields::find(const std::string& key) const {
  known_.insert(key);
  auto it = object_->find(key);
  if (it == object_->end() || (options_.null_is_absent && it->is_null())) return nullptr;
  return &*it;
}

bool JsonFields::present(const std::string& key) const {
  known_.insert(key);
  return has(key);
}

const json& JsonFields::require(const std::string& key, const std::string& expected) const {
  const json* v = find(key);
  if (!v) {
    throw_error(source_ + ": '" + key_path(key) + "' missing" +
                (expected.empty() ? std::string() : " (must be " + expected + ")"));
  }
  return *v;
}

const json& JsonFields::value(const std::string& key) const { return require(key, ""); }

std::string JsonFields::string(const std::string& key) const {
  const json& v = require(key, "a string");
  if (!v.is_string()) type_error(key, "a string", v);
  return v.get<std::string>();
}

std::optional<std::string> JsonFields::optional_string(const std::string& key) const {
  if (!present(key)) return std::nullopt;
  return string(key);
}

std::string JsonFields::one_of(const std::string& key,
                               std::initializer_list<const char*> allowed) const {
  const std::string expected = "one of " + quoted_list(allowed);
  const json& v = require(key, expected);
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    for (const char* a : allowed) {
      if (s == a) return s;
    }
  }
  type_error(key, expected, v);
}

std::optional<std::string> JsonFields::optional_one_of(
    const std::string& key, std::initializer_list<const char*> allowed) const {
  if (!present(key)) return std::nullopt;
  return one_of(key, allowed);
}

bool JsonFields::boolean(const std::string& key) const {
  const json& v = require(key, "true or false");
  if (!v.is_boolean()) type_error(key, "true or false", v);
  return v.get<bool>();
}

std::optional<bool> JsonFields::optional_boolean(const std::string& key) const {
  if (!present(key)) return std::nullopt;
  return boolean(key);
}

int64_t JsonFields::integer(const std::string& key, IntRange range) const {
  const std::string expected = range.describe();
  const json& v = require(key, expected);
  // An unsigned value above INT64_MAX is out of every range, not a wrapped negative number.
  const bool fits = v.is_number_integer() &&
                    !(v.is_number_unsigned() &&
                      v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  if (!fits || !range.contains(v.get<int64_t>())) type_error(key, expected, v);
  return v.get<int64_t>();
}

std::optional<int64_t> JsonFields::optional_integer(const std::string& key, IntRange range) const {
  if (!present(key)) return std::nullopt;
  return integer(key, range);
}

double JsonFields::number(const std::string& key, NumberRange range) const {
  const std::string expected = range.describe();
  const json& v = require(key, expected);
  if (!v.is_number() || !range.contains(v.get<double>())) type_error(key, expected, v);
  return v.get<double>();
}

std::optional<double> JsonFields::optional_number(const std::string& key, NumberRange range) const {
  if (!present(key)) return std::nullopt;
  return number(key, range);
}

JsonFields JsonFields::object(const std::string& key) const {
  return JsonFields(require(key, "an object"), source_, options_, key_path(key));
}

std::optional<JsonFields> JsonFields::optional_object(const std::string& key) const {
  if (!present(key)) return std::nullopt;
  return object(key);
}

const json& JsonFields::array(const std::string& key) const {
  const json& v = require(key, "an array");
  if (!v.is_array()) type_error(key, "an array", v);
  return v;
}

const json* JsonFields::optional_array(const std::string& key) const {
  if (!present(key)) return nullptr;
  return &array(key);
}

std::vector<JsonFields> JsonFields::objects(const std::string& key) const {
  const json& list = array(key);
  std::vector<JsonFields> out;
  out.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    out.emplace_back(list[i], source_, options_, key_path(key) + "[" + std::to_string(i) + "]");
  }
  return out;
}

JsonFields JsonFields::nested(const json& object, const std::string& relative) const {
  std::string path = path_;
  if (!path.empty() && !relative.empty() && relative[0] != '[') path += ".";
  return JsonFields(object, source_, options_, path + relative);
}

void JsonFields::reject_unknown_keys() const {
  for (auto it = object_->begin(); it != object_->end(); ++it) {
    if (known_.count(it.key()) == 0) {
      throw_error(source_ + ": unknown key '" + key_path(it.key()) + "'");
    }
  }
}

}  // namespace resq
