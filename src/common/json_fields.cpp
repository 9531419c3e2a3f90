// The strict JSON field reader: type and range checks, key paths and the messages that name them.
#include "resq/common/json_fields.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>

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

namespace {

// Where the parser is: one frame per open array or object, holding the key or index of the
// child being read, so that a message can say 'weights.bits[2]'.
class JsonPosition {
 public:
  size_t depth() const { return frames_.size(); }
  // A value (scalar or container) begins in the innermost container.
  void value() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().count;
  }
  void open(bool object) {
    value();
    frames_.push_back({object, false, std::string(), 0, {}});
  }
  void close() {
    frames_.pop_back();
    done();
  }
  // The value begun last is complete: in an object the next error is after its key.
  void done() {
    if (!frames_.empty() && frames_.back().object) frames_.back().has_key = false;
  }
  // Records the key; false when unique keys are wanted and the object already had it.
  bool key(const std::string& k, bool unique) {
    Frame& f = frames_.back();
    f.has_key = true;
    f.key = k;
    return !unique || f.seen.insert(k).second;
  }
  // Path of the value being read; `pending`: its start event has not come yet (a parse error).
  // `levels`: only the outermost ones (the path of an open container).
  std::string path(bool pending, size_t levels = SIZE_MAX) const {
    std::string p;
    for (size_t i = 0; i < std::min(levels, frames_.size()); ++i) {
      const Frame& f = frames_[i];
      if (f.object) {
        if (!f.has_key) continue;
        p += is_plain_key(f.key) ? (p.empty() ? "" : ".") + f.key
                                 : "[" + json(f.key).dump(-1, ' ', false, json::error_handler_t::replace) + "]";
      } else {
        const size_t index = pending && i + 1 == frames_.size() ? f.count : f.count - 1;
        if (f.count == 0 && !pending) continue;
        p += "[" + std::to_string(index) + "]";
      }
      if (p.size() > 120) return p.substr(0, 117) + "...";
    }
    return p;
  }

 private:
  struct Frame {
    bool object;
    bool has_key;
    std::string key;
    size_t count;                // array: values begun so far
    std::set<std::string> seen;  // object keys, only with unique keys
  };
  std::vector<Frame> frames_;
};

// nlohmann's "[json.exception.parse_error.101] parse error at ..." without the bracketed id.
std::string nlohmann_message(const std::exception& e) {
  std::string m = e.what();
  if (m.rfind("[json.exception.", 0) == 0) {
    const size_t close = m.find("] ");
    if (close != std::string::npos) m.erase(0, close + 2);
  }
  return m;
}

// Forwards every event to `inner` after the checks of sax_parse_json.
class GuardedSax : public json::json_sax_t {
 public:
  GuardedSax(json::json_sax_t& inner, const std::string& source, JsonParseOptions options)
      : inner_(inner), source_(source), options_(options) {}

  bool null() override { return scalar_call([&] { return inner_.null(); }); }
  bool boolean(bool v) override { return scalar_call([&] { return inner_.boolean(v); }); }
  bool number_integer(number_integer_t v) override { return scalar_call([&] { return inner_.number_integer(v); }); }
  bool number_unsigned(number_unsigned_t v) override { return scalar_call([&] { return inner_.number_unsigned(v); }); }
  bool number_float(number_float_t v, const string_t& s) override {
    return scalar_call([&] { return inner_.number_float(v, s); });
  }
  bool string(string_t& v) override { return scalar_call([&] { return inner_.string(v); }); }
  bool binary(binary_t& v) override { return scalar_call([&] { return inner_.binary(v); }); }
  bool start_object(std::size_t n) override { return open(true), inner_.start_object(n); }
  bool key(string_t& k) override {
    if (!position_.key(k, options_.unique_keys)) {
      const std::string in = position_.depth() > 1 ? " in '" + parent_path() + "'" : std::string();
      fail(source_ + ": the key '" + k + "' appears more than once" + in +
           " (JSON keys must be unique)");
    }
    return inner_.key(k);
  }
  bool end_object() override { return position_.close(), inner_.end_object(); }
  bool start_array(std::size_t n) override { return open(false), inner_.start_array(n); }
  bool end_array() override { return position_.close(), inner_.end_array(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    fail(source_ + ": invalid JSON" + at(true) + ": " + nlohmann_message(e));
  }

  // An exception of nlohmann's raised by `inner`, made a typed error naming the position.
  [[noreturn]] void rethrow(const json::exception& e) const {
    fail(source_ + ": unexpected JSON content" + at(false) + ": " + nlohmann_message(e));
  }

 private:
  // `forwarded` is the inner call, evaluated in between: an error there names the scalar's key.
  template <typename Call>
  bool scalar_call(Call&& forwarded) {
    position_.value();
    const bool ok = forwarded();
    position_.done();
    return ok;
  }
  void open(bool object) {
    position_.open(object);
    if (position_.depth() > kMaxJsonDepth) {
      fail(source_ + ": invalid JSON" + at(false) + ": arrays and objects nested deeper than " +
           std::to_string(kMaxJsonDepth) + " levels");
    }
  }
  std::string at(bool pending) const {
    const std::string p = position_.path(pending);
    return p.empty() ? std::string() : " at '" + p + "'";
  }
  // The object holding a repeated key.
  std::string parent_path() const { return position_.path(false, position_.depth() - 1); }
  [[noreturn]] void fail(const std::string& message) const { throw_kind(options_.error, message); }

  json::json_sax_t& inner_;
  const std::string& source_;
  JsonParseOptions options_;
  JsonPosition position_;
};

// Builds the DOM (what nlohmann's own parser does), placing each value where the events say.
class DomBuilder : public json::json_sax_t {
 public:
  json root;

  bool null() override { return place(json()), true; }
  bool boolean(bool v) override { return place(json(v)), true; }
  bool number_integer(number_integer_t v) override { return place(json(v)), true; }
  bool number_unsigned(number_unsigned_t v) override { return place(json(v)), true; }
  bool number_float(number_float_t v, const string_t&) override { return place(json(v)), true; }
  bool string(string_t& v) override { return place(json(std::move(v))), true; }
  bool binary(binary_t& v) override { return place(json(std::move(v))), true; }
  bool start_object(std::size_t) override {
    stack_.push_back({place(json::object()), std::string()});
    return true;
  }
  bool key(string_t& k) override {
    stack_.back().key = std::move(k);
    return true;
  }
  bool end_object() override { return stack_.pop_back(), true; }
  bool start_array(std::size_t) override {
    stack_.push_back({place(json::array()), std::string()});
    return true;
  }
  bool end_array() override { return stack_.pop_back(), true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // GuardedSax reports it
  }

 private:
  struct Frame {
    json* value;
    std::string key;
  };
  // Pointers to open containers stay valid: a parent only grows after its open child is closed.
  json* place(json v) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    Frame& top = stack_.back();
    if (top.value->is_object()) {
      json& slot = (*top.value)[top.key];  // a repeated key: the last one wins
      slot = std::move(v);
      return &slot;
    }
    top.value->push_back(std::move(v));
    return &top.value->back();
  }

  std::vector<Frame> stack_;
};

}  // namespace

void sax_parse_json(std::string_view text, const std::string& source, json::json_sax_t& sax,
                    JsonParseOptions options) {
  // nlohmann's lexer reads a NUL as the end of the input, which would accept "{}\0garbage"; a raw
  // NUL is never valid JSON (inside a string it must be written \u0000).
  if (const void* nul = std::memchr(text.data(), '\0', text.size())) {
    throw_kind(options.error, source + ": invalid JSON: NUL byte at offset " +
                                  std::to_string(static_cast<const char*>(nul) - text.data()));
  }
  GuardedSax guarded(sax, source, options);
  try {
    json::sax_parse(text.begin(), text.end(), &guarded);
  } catch (const json::exception& e) {
    guarded.rethrow(e);
  }
}

json parse_json(std::string_view text, const std::string& source, JsonParseOptions options) {
  DomBuilder dom;
  sax_parse_json(text, source, dom, options);
  return std::move(dom.root);
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
