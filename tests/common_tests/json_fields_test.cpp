// Tests of the strict JSON field reader (resq/common/json_fields.h): every getter, ranges, missing
// and unknown keys, type errors, null handling, nested paths and the exception kinds.
#include "resq/common/json_fields.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "common/test_util.h"
#include "resq/common/error.h"

namespace resq {
namespace {

using nlohmann::json;

template <typename Fn>
std::string config_error(Fn&& fn) {
  return test::message_of<ConfigError>(std::forward<Fn>(fn));
}

const json kSample = json::parse(R"({
  "name": "resq", "flag": true, "count": 7, "big": 18446744073709551615, "ratio": 0.25,
  "nothing": null, "list": [1, 2], "method": "gptq",
  "weights": {"bits": 4, "inner": {"deep": "x"}},
  "steps": [{"type": "A"}, {"type": 3}], "mixed": [{"type": "A"}, 5],
  "odd key": {"<s>": {"ids": "x"}}
})");

TEST(JsonFields, RequiredGettersReadTheirTypes) {
  const JsonFields in(kSample, "f.json");
  EXPECT_EQ(in.string("name"), "resq");
  EXPECT_TRUE(in.boolean("flag"));
  EXPECT_EQ(in.integer("count"), 7);
  EXPECT_DOUBLE_EQ(in.number("ratio"), 0.25);
  EXPECT_DOUBLE_EQ(in.number("count"), 7.0);  // an integer is a number
  EXPECT_EQ(in.one_of("method", {"gptq", "rtn"}), "gptq");
  EXPECT_EQ(in.array("list").size(), 2u);
  EXPECT_EQ(in.value("list"), json::array({1, 2}));
  EXPECT_EQ(in.object("weights").integer("bits"), 4);
  EXPECT_EQ(in.object("weights").object("inner").string("deep"), "x");
}

TEST(JsonFields, TypeErrorsNameFileKeyExpectationAndValue) {
  const JsonFields in(kSample, "f.json");
  EXPECT_EQ(config_error([&] { in.string("count"); }), "f.json: 'count' must be a string, got 7");
  EXPECT_EQ(config_error([&] { in.boolean("name"); }),
            "f.json: 'name' must be true or false, got \"resq\"");
  EXPECT_EQ(config_error([&] { in.integer("ratio"); }), "f.json: 'ratio' must be an integer, got 0.25");
  EXPECT_EQ(config_error([&] { in.integer("name"); }),
            "f.json: 'name' must be an integer, got \"resq\"");
  EXPECT_EQ(config_error([&] { in.number("flag"); }), "f.json: 'flag' must be a number, got true");
  EXPECT_EQ(config_error([&] { in.object("list"); }), "f.json: 'list' must be an object, got [1,2]");
  EXPECT_EQ(config_error([&] { in.array("weights"); }),
            "f.json: 'weights' must be an array, got {\"bits\":4,\"inner\":{\"deep\":\"x\"}}");
  EXPECT_EQ(config_error([&] { in.one_of("method", {"rtn", "none"}); }),
            "f.json: 'method' must be one of \"rtn\", \"none\", got \"gptq\"");
  EXPECT_EQ(config_error([&] { in.one_of("count", {"rtn"}); }),
            "f.json: 'count' must be one of \"rtn\", got 7");
  // A null is a wrong type unless null_is_absent.
  EXPECT_EQ(config_error([&] { in.string("nothing"); }), "f.json: 'nothing' must be a string, got null");
  EXPECT_EQ(config_error([&] { in.optional_boolean("nothing"); }),
            "f.json: 'nothing' must be true or false, got null");
}

TEST(JsonFields, IntegerRanges) {
  const JsonFields in(kSample, "f.json");
  EXPECT_EQ(in.integer("count", IntRange::between(7, 7)), 7);
  EXPECT_EQ(in.integer("count", IntRange::at_least(7)), 7);
  EXPECT_EQ(in.integer("count", IntRange::positive()), 7);
  EXPECT_EQ(config_error([&] { in.integer("count", IntRange::between(0, 6)); }),
            "f.json: 'count' must be an integer in [0, 6], got 7");
  EXPECT_EQ(config_error([&] { in.integer("count", IntRange::at_least(8)); }),
            "f.json: 'count' must be an integer >= 8, got 7");
  EXPECT_EQ(config_error([&] { in.integer("count", IntRange{IntRange::any().lo, 6}); }),
            "f.json: 'count' must be an integer <= 6, got 7");
  EXPECT_EQ(config_error([&] { in.integer("name", IntRange::positive()); }),
            "f.json: 'name' must be an integer >= 1, got \"resq\"");
  // Above INT64_MAX: out of every range, never wrapped to a negative number.
  EXPECT_EQ(config_error([&] { in.integer("big"); }),
            "f.json: 'big' must be an integer, got 18446744073709551615");
}

TEST(JsonFields, NumberRanges) {
  const JsonFields in(kSample, "f.json");
  EXPECT_DOUBLE_EQ(in.number("ratio", NumberRange::closed(0.25, 0.25)), 0.25);
  EXPECT_DOUBLE_EQ(in.number("ratio", NumberRange::open(0, 1)), 0.25);
  EXPECT_DOUBLE_EQ(in.number("ratio", NumberRange::greater_than(0)), 0.25);
  const auto bad = [&](NumberRange range) { return config_error([&] { in.number("ratio", range); }); };
  EXPECT_EQ(bad(NumberRange::closed_open(0, 0.25)), "f.json: 'ratio' must be a number in [0, 0.25), got 0.25");
  EXPECT_EQ(bad(NumberRange::open_closed(0.25, 1)), "f.json: 'ratio' must be a number in (0.25, 1], got 0.25");
  EXPECT_EQ(bad(NumberRange::open(0.25, 1)), "f.json: 'ratio' must be a number in (0.25, 1), got 0.25");
  EXPECT_EQ(bad(NumberRange::closed(1e-06, 0.125)), "f.json: 'ratio' must be a number in [1e-06, 0.125], got 0.25");
  EXPECT_EQ(bad(NumberRange::at_least(1)), "f.json: 'ratio' must be a number >= 1, got 0.25");
  EXPECT_EQ(bad(NumberRange::greater_than(0.25)), "f.json: 'ratio' must be a number > 0.25, got 0.25");
  EXPECT_EQ(bad(NumberRange{NumberRange::any().lo, 0.1, false, true}),
            "f.json: 'ratio' must be a number < 0.1, got 0.25");
}

TEST(JsonFields, OptionalGettersGiveNulloptWhenAbsentAndStillCheckWhenPresent) {
  const JsonFields in(kSample, "f.json");
  EXPECT_EQ(in.optional_string("absent"), std::nullopt);
  EXPECT_EQ(in.optional_boolean("absent"), std::nullopt);
  EXPECT_EQ(in.optional_integer("absent", IntRange::positive()), std::nullopt);
  EXPECT_EQ(in.optional_number("absent", NumberRange::open(0, 1)), std::nullopt);
  EXPECT_EQ(in.optional_one_of("absent", {"a"}), std::nullopt);
  EXPECT_FALSE(in.optional_object("absent").has_value());
  EXPECT_EQ(in.optional_array("absent"), nullptr);
  EXPECT_EQ(in.find("absent"), nullptr);
  EXPECT_EQ(in.optional_string("name"), "resq");
  EXPECT_EQ(in.optional_boolean("flag"), true);
  EXPECT_EQ(in.optional_integer("count"), 7);
  EXPECT_EQ(in.optional_number("ratio"), 0.25);
  EXPECT_EQ(in.optional_one_of("method", {"gptq"}), "gptq");
  EXPECT_EQ(in.optional_object("weights")->integer("bits"), 4);
  EXPECT_EQ(in.optional_array("list")->size(), 2u);
  EXPECT_EQ(config_error([&] { in.optional_integer("count", IntRange::at_least(10)); }),
            "f.json: 'count' must be an integer >= 10, got 7");
  EXPECT_EQ(config_error([&] { in.optional_string("flag"); }), "f.json: 'flag' must be a string, got true");
}

TEST(JsonFields, MissingRequiredKeysSayWhatWasExpected) {
  const JsonFields in(kSample, "f.json");
  EXPECT_EQ(config_error([&] { in.string("absent"); }), "f.json: 'absent' missing (must be a string)");
  EXPECT_EQ(config_error([&] { in.integer("absent", IntRange::positive()); }),
            "f.json: 'absent' missing (must be an integer >= 1)");
  EXPECT_EQ(config_error([&] { in.number("absent", NumberRange::open_closed(0, 1)); }),
            "f.json: 'absent' missing (must be a number in (0, 1])");
  EXPECT_EQ(config_error([&] { in.boolean("absent"); }), "f.json: 'absent' missing (must be true or false)");
  EXPECT_EQ(config_error([&] { in.object("absent"); }), "f.json: 'absent' missing (must be an object)");
  EXPECT_EQ(config_error([&] { in.array("absent"); }), "f.json: 'absent' missing (must be an array)");
  EXPECT_EQ(config_error([&] { in.one_of("absent", {"a", "b"}); }),
            "f.json: 'absent' missing (must be one of \"a\", \"b\")");
  EXPECT_EQ(config_error([&] { in.value("absent"); }), "f.json: 'absent' missing");
  EXPECT_EQ(config_error([&] { in.object("weights").integer("absent"); }),
            "f.json: 'weights.absent' missing (must be an integer)");
}

TEST(JsonFields, NullIsAbsentWhenAsked) {
  const JsonFields in(kSample, "hf.json", {JsonErrorKind::kConfig, /*null_is_absent=*/true});
  EXPECT_FALSE(in.has("nothing"));
  EXPECT_EQ(in.find("nothing"), nullptr);
  EXPECT_EQ(in.optional_string("nothing"), std::nullopt);
  EXPECT_FALSE(in.optional_object("nothing").has_value());
  EXPECT_EQ(config_error([&] { in.integer("nothing"); }), "hf.json: 'nothing' missing (must be an integer)");
  // Children inherit the options.
  EXPECT_TRUE(in.object("weights").options().null_is_absent);
  const JsonFields strict(kSample, "f.json");
  EXPECT_TRUE(strict.has("nothing"));
  EXPECT_NE(strict.find("nothing"), nullptr);
}

TEST(JsonFields, NestedPathsInMessages) {
  const JsonFields in(kSample, "f.json");
  EXPECT_EQ(config_error([&] { in.object("weights").object("inner").integer("deep"); }),
            "f.json: 'weights.inner.deep' must be an integer, got \"x\"");
  const std::vector<JsonFields> steps = in.objects("steps");
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].string("type"), "A");
  EXPECT_EQ(steps[1].path(), "steps[1]");
  EXPECT_EQ(config_error([&] { steps[1].string("type"); }),
            "f.json: 'steps[1].type' must be a string, got 3");
  EXPECT_EQ(config_error([&] { in.objects("mixed"); }), "f.json: 'mixed[1]' must be an object, got 5");
  EXPECT_EQ(config_error([&] { in.objects("count"); }), "f.json: 'count' must be an array, got 7");
  // Keys that are not plain words are quoted.
  const JsonFields odd = in.object("odd key").object("<s>");
  EXPECT_EQ(odd.path(), "[\"odd key\"][\"<s>\"]");
  EXPECT_EQ(config_error([&] { odd.array("ids"); }),
            "f.json: '[\"odd key\"][\"<s>\"].ids' must be an array, got \"x\"");
  // nested(): a reader of a value the caller found itself.
  const JsonFields weights = in.object("weights");
  const JsonFields inner = weights.nested(weights.value("inner"), "inner");
  EXPECT_EQ(inner.path(), "weights.inner");
  EXPECT_EQ(weights.nested(kSample["steps"][0], "[0]").path(), "weights[0]");
  EXPECT_EQ(in.nested(kSample["weights"], "w").path(), "w");
  EXPECT_EQ(config_error([&] { weights.nested(kSample["list"], "list"); }),
            "f.json: 'weights.list' must be an object, got [1,2]");
}

TEST(JsonFields, WhereKeyPathAndFail) {
  const JsonFields in(kSample, "f.json");
  const JsonFields weights = in.object("weights");
  EXPECT_EQ(in.where(), "f.json");
  EXPECT_EQ(in.where("name"), "f.json: name");
  EXPECT_EQ(weights.where(), "f.json: weights");
  EXPECT_EQ(weights.where("bits"), "f.json: weights.bits");
  EXPECT_EQ(weights.key_path("bits"), "weights.bits");
  EXPECT_EQ(config_error([&] { weights.fail("bits", "must be even"); }), "f.json: 'weights.bits' must be even");
  EXPECT_EQ(config_error([&] { weights.fail("is odd"); }), "f.json: 'weights' is odd");
  EXPECT_EQ(config_error([&] { in.fail("is odd"); }), "f.json: the top level is odd");
}

TEST(JsonFields, TopLevelMustBeAnObject) {
  EXPECT_EQ(config_error([] { JsonFields(json::array({1}), "f.json"); }),
            "f.json: the top level must be an object, got [1]");
  EXPECT_EQ(config_error([] { JsonFields(json("x"), "f.json"); }),
            "f.json: the top level must be an object, got \"x\"");
}

TEST(JsonFields, UnknownKeysAreTheOnesNoGetterAskedFor) {
  const json j = json::parse(R"({"a": 1, "b": {"c": 2, "typo": 3}, "z": null})");
  const JsonFields in(j, "f.json");
  in.integer("a");
  const JsonFields b = in.object("b");
  EXPECT_EQ(in.optional_string("z_absent"), std::nullopt);
  EXPECT_EQ(config_error([&] { in.reject_unknown_keys(); }), "f.json: unknown key 'z'");
  in.find("z");  // find marks a key known too
  in.reject_unknown_keys();
  b.integer("c");
  EXPECT_EQ(config_error([&] { b.reject_unknown_keys(); }), "f.json: unknown key 'b.typo'");
  // has() does not mark the key known.
  const JsonFields again(j["b"], "f.json");
  EXPECT_TRUE(again.has("c"));
  again.optional_integer("typo");
  EXPECT_EQ(config_error([&] { again.reject_unknown_keys(); }), "f.json: unknown key 'c'");
}

TEST(JsonFields, FormatKindThrowsFormatError) {
  const JsonFields in(kSample, "meta.json", {JsonErrorKind::kFormat});
  EXPECT_EQ(test::message_of<FormatError>([&] { in.integer("name"); }),
            "meta.json: 'name' must be an integer, got \"resq\"");
  EXPECT_EQ(test::message_of<FormatError>([&] { in.object("weights").string("absent"); }),
            "meta.json: 'weights.absent' missing (must be a string)");
  EXPECT_EQ(test::message_of<FormatError>([&] { in.reject_unknown_keys(); }), "meta.json: unknown key 'big'");
  EXPECT_EQ(test::message_of<FormatError>([] { JsonFields(json(1), "meta.json", {JsonErrorKind::kFormat}); }),
            "meta.json: the top level must be an object, got 1");
}

TEST(JsonFields, LongAndInvalidUtf8ValuesAreCutInMessages) {
  const json j = {{"long", std::string(200, 'a')}, {"bad", std::string("\xFF")}};
  const JsonFields in(j, "f.json");
  const std::string long_message = config_error([&] { in.integer("long"); });
  EXPECT_EQ(long_message, "f.json: 'long' must be an integer, got \"" + std::string(76, 'a') + "...");
  EXPECT_EQ(config_error([&] { in.integer("bad"); }), "f.json: 'bad' must be an integer, got \"\xEF\xBF\xBD\"");
  EXPECT_EQ(json_excerpt(json::array({1, "x"})), "[1,\"x\"]");
}

TEST(ParseJson, ParsesOrNamesTheSource) {
  EXPECT_EQ(parse_json("{\"a\": [1]}", "f.json"), json::parse("{\"a\": [1]}"));
  const std::string config = config_error([] { parse_json("{\"a\": ", "f.json"); });
  EXPECT_EQ(config.rfind("f.json: invalid JSON at 'a': parse error at line 1, column 7", 0), 0u) << config;
  const std::string format =
      test::message_of<FormatError>([] { parse_json("[1, }", "g.json", JsonErrorKind::kFormat); });
  EXPECT_EQ(format.rfind("g.json: invalid JSON at '[1]': parse error", 0), 0u) << format;
  EXPECT_EQ(config_error([] { parse_json("", "empty.json"); }).rfind("empty.json: invalid JSON: ", 0), 0u);
}

// Defect 1 of issue 19: 100,000 nested arrays parsed fine but overflowed the stack on the first
// dump or copy (nlohmann recurses once per level). The depth limit refuses them at the parser.
TEST(ParseJson, RefusesNestingDeeperThanTheLimit) {
  const size_t n = 100000;
  const std::string deep = "{\"shape\": " + std::string(n, '[') + std::string(n, ']') + "}";
  const std::string message = config_error([&] { parse_json(deep, "f.json"); });
  EXPECT_EQ(message.rfind("f.json: invalid JSON at 'shape[0][0]", 0), 0u) << message;
  EXPECT_NE(message.find("nested deeper than 128 levels"), std::string::npos) << message;
  EXPECT_LT(message.size(), 250u) << message;  // the path is cut

  // kMaxJsonDepth levels are accepted (and copy and dump), one more is not.
  const auto nested = [](size_t levels) { return std::string(levels, '[') + std::string(levels, ']'); };
  const json ok = parse_json(nested(kMaxJsonDepth), "ok.json");
  EXPECT_EQ(json(ok).dump(), nested(kMaxJsonDepth));
  EXPECT_NE(config_error([&] { parse_json(nested(kMaxJsonDepth + 1), "f.json"); }).find("deeper than"),
            std::string::npos);
  std::string objects;
  for (size_t i = 0; i <= kMaxJsonDepth; ++i) objects += "{\"a\":";
  objects += "1" + std::string(kMaxJsonDepth + 1, '}');
  EXPECT_NE(config_error([&] { parse_json(objects, "f.json"); }).find("'a.a.a.a"), std::string::npos);
}

// Defect 2 of issue 19: 1e400 escaped as nlohmann's out_of_range.406 ("internal error").
TEST(ParseJson, NumberOverflowNamesTheFileAndTheKey) {
  const std::string text = R"({"rope_scaling": {"factor": 1e400}})";
  EXPECT_EQ(config_error([&] { parse_json(text, "config.json"); }),
            "config.json: invalid JSON at 'rope_scaling.factor': number overflow parsing '1e400'");
  EXPECT_EQ(test::message_of<FormatError>(
                [] { parse_json("[1, 2, -1e999]", "m.json", JsonErrorKind::kFormat); }),
            "m.json: invalid JSON at '[2]': number overflow parsing '-1e999'");
}

TEST(ParseJson, RefusesNulBytesAndOptionallyRepeatedKeys) {
  EXPECT_EQ(config_error([] { parse_json(std::string("{}\0{\"x\":1}", 10), "f.json"); }),
            "f.json: invalid JSON: NUL byte at offset 2");
  const std::string twice = R"({"a": {"b": 1, "b": 2}})";
  EXPECT_EQ(parse_json(twice, "f.json"), json::parse(R"({"a": {"b": 2}})"));  // the last one wins
  EXPECT_EQ(config_error([&] { parse_json(twice, "f.json", JsonParseOptions{JsonErrorKind::kConfig, true}); }),
            "f.json: the key 'b' appears more than once in 'a' (JSON keys must be unique)");
  // The same key in two different objects is fine.
  EXPECT_NO_THROW(parse_json(R"([{"b": 1}, {"b": 2}])", "f.json", JsonParseOptions{JsonErrorKind::kConfig, true}));
}

// A SAX reader that calls nlohmann in a way that throws (here get<int>() of a string) gets a
// typed error naming the file and the position, not nlohmann's exception.
TEST(ParseJson, NlohmannExceptionsOfTheReaderBecomeTypedErrors) {
  struct Reader : json::json_sax_t {
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t& v) override { return json(v).get<int>() >= 0; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool key(string_t&) override { return true; }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }
  } reader;
  const std::string message = test::message_of<FormatError>(
      [&] { sax_parse_json(R"({"ids": [1, "x"]})", "t.json", reader, {JsonErrorKind::kFormat}); });
  EXPECT_EQ(message.rfind("t.json: unexpected JSON content at 'ids[1]': type must be number", 0), 0u) << message;
}

}  // namespace
}  // namespace resq
