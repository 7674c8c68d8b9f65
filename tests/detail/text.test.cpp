#include <catch2/catch.hpp>

#include <hgad/detail/text.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace text_test {

namespace {

enum class Colour { red, green, blue };
constexpr hgad::detail::NamedValue<Colour> colour_names[] = {
    {"red", Colour::red}, {"green", Colour::green}, {"blue", Colour::blue}};

}  // namespace

TEST_CASE("split_list trims the pieces and join writes what it reads back", "[detail]") {
  using hgad::detail::join;
  using hgad::detail::split_list;
  CHECK(hgad::detail::trim(" \t a b \r") == "a b");
  CHECK(split_list("").empty());
  CHECK(split_list(" \t ").empty());
  CHECK(split_list("a") == std::vector<std::string>{"a"});
  CHECK(split_list(" a ,b,, c ") == std::vector<std::string>{"a", "b", "", "c"});
  CHECK(split_list("a,") == std::vector<std::string>{"a", ""});
  CHECK(join({}) == "");
  CHECK(join({"a", "b", "c"}) == "a, b, c");
  const std::vector<std::string> names = {"kolektor", "magnetic_tile", "pcb1"};
  CHECK(split_list(join(names)) == names);
}

TEST_CASE("parse_number reads a whole number and nothing else", "[detail]") {
  using hgad::detail::parse_number;
  std::int64_t i = 0;
  CHECK((parse_number("42", i) && i == 42));
  CHECK((parse_number("+7", i) && i == 7));
  CHECK((parse_number("-9223372036854775808", i) && i == std::numeric_limits<std::int64_t>::min()));
  for (const char* bad :
       {"", " 1", "1 ", "1.5", "1e3", "0x10", "abc", "9223372036854775808", "++1"})
    CHECK_FALSE(parse_number(bad, i));

  std::uint64_t u = 0;
  CHECK(
      (parse_number("18446744073709551615", u) && u == std::numeric_limits<std::uint64_t>::max()));
  for (const char* bad : {"-1", "-0", "18446744073709551616", "+-1"})
    CHECK_FALSE(parse_number(bad, u));

  double d = 0;
  CHECK((parse_number("1e-3", d) && d == 1e-3));
  CHECK((parse_number("+2.5", d) && d == 2.5));
  for (const char* bad : {"nan", "inf", "-inf", "1e-3x", "1e999", ""})
    CHECK_FALSE(parse_number(bad, d));
}

TEST_CASE("format_double gives the shortest text that reads back exactly", "[detail]") {
  using hgad::detail::format_double;
  CHECK(format_double(0.1) == "0.1");
  CHECK(format_double(100.0) == "100");
  CHECK(format_double(2e-4) == "2e-04");
  for (double v : {1.0 / 3.0, 5e-324, 1.7976931348623157e308, -0.5}) {
    double back = 0;
    REQUIRE(hgad::detail::parse_number(format_double(v), back));
    CHECK(back == v);
  }
}

TEST_CASE("is_plain_name accepts letters, digits, '_', '-' and '.' only", "[detail]") {
  CHECK(hgad::detail::is_plain_name("pcb1"));
  CHECK(hgad::detail::is_plain_name("magnetic_tile-v2.0"));
  for (const char* bad : {"", "a b", "a,b", "a/b", "a=b", "a#b"})
    CHECK_FALSE(hgad::detail::is_plain_name(bad));
}

TEST_CASE("NamedValue tables spell an enumeration's values both ways", "[detail]") {
  using namespace hgad::detail;
  CHECK(std::string(name_of(colour_names, Colour::green)) == "green");
  CHECK(std::string(name_of(colour_names, static_cast<Colour>(7))) == "?");
  Colour c = Colour::red;
  CHECK((value_named(colour_names, "blue", c) && c == Colour::blue));
  CHECK_FALSE(value_named(colour_names, "Blue", c));
  CHECK(c == Colour::blue);
  CHECK(alternatives(colour_names) == "red, green or blue");
  constexpr const char* two[] = {"stretch", "shorter_side_crop"};
  constexpr const char* one[] = {"only"};
  CHECK(alternatives(two) == "stretch or shorter_side_crop");
  CHECK(alternatives(one) == "only");
  CHECK(is_one_of(two, "stretch"));
  CHECK_FALSE(is_one_of(two, "crop"));
}

}  // namespace text_test
