#pragma once
/// \file
/// The string helpers of hgad's small text formats (a model configuration's `key = value` lines,
/// lists of class names): trimming, comma-separated lists, numbers read from a whole text, the
/// shortest exact text of a double, plain names, and the spellings of an enumeration's values.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <sstream>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace hgad::detail {

/// The shortest decimal text that reads back as exactly `value`.
inline std::string format_double(double value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

/// `s` without leading and trailing blanks (spaces, tabs, carriage returns).
inline std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t\r");
  return s.substr(first, last - first + 1);
}

/// Splits on `separator` and trims each piece; an empty or all-blank text gives no pieces.
inline std::vector<std::string> split_list(const std::string& text, char separator = ',') {
  std::vector<std::string> out;
  if (trim(text).empty()) return out;
  std::string piece;
  std::istringstream in(text);
  while (std::getline(in, piece, separator)) out.push_back(trim(piece));
  if (!text.empty() && text.back() == separator) out.push_back("");
  return out;
}

/// The items separated by ", ": the text split_list reads back.
inline std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
}

/// Reads a whole decimal number into `out`: an integer for an integral `Number` (no sign for an
/// unsigned one), a finite number for a floating-point one. A leading '+' is allowed; anything
/// else around the number, or a value out of range, gives false.
template <class Number>
bool parse_number(const std::string& text, Number& out) {
  if (text.empty()) return false;
  if (std::is_unsigned<Number>::value && text[0] == '-') return false;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  if (*first == '+') ++first;
  const auto result = std::from_chars(first, last, out);
  if (result.ec != std::errc() || result.ptr != last) return false;
  if constexpr (std::is_floating_point<Number>::value) return std::isfinite(out);
  return true;
}

/// What a plain name must be, in the words of an error message (see is_plain_name).
inline constexpr char plain_name_requirement[] =
    "must be non-empty and use only letters, digits, '_', '-', '.'";

/// A class name, a folder name or a layer name: non-empty, letters, digits, '_', '-', '.'; no
/// separators.
inline bool is_plain_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

/// A layer's name split into its base name and pyramid scale: "layer3" is {"layer3", 0},
/// "layer3@scale1" {"layer3", 1} (the layer of the image at 1 / 2^1 of its size). The scale has at
/// most two digits; `ok` is false for any other text after "@scale" or a base that is not plain.
struct LayerName {
  bool ok = false;
  std::string base;
  int scale = 0;
};

inline LayerName split_layer_name(const std::string& name) {
  const std::string::size_type at = name.find("@scale");
  LayerName out;
  out.base = name.substr(0, at);
  if (!is_plain_name(out.base)) return out;
  if (at == std::string::npos) {
    out.ok = true;
    return out;
  }
  const std::string digits = name.substr(at + 6);
  if (digits.empty() || digits.size() > 2 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return out;
  out.scale = std::stoi(digits);
  out.ok = true;
  return out;
}

/// A layer of a model's feature settings: a plain name, or a plain name, "@scale" and one or two
/// digits (split_layer_name).
inline bool is_layer_name(const std::string& name) { return split_layer_name(name).ok; }

/// The spelling of one value of an enumeration in a text format. An array of them is the one
/// place that value's text lives; name_of writes it and value_named reads it.
template <class Value>
struct NamedValue {
  const char* name;
  Value value;
};

/// The name `names` gives `value`; "?" when it gives none.
template <class Value, std::size_t N>
const char* name_of(const NamedValue<Value> (&names)[N], Value value) {
  for (const NamedValue<Value>& n : names)
    if (n.value == value) return n.name;
  return "?";
}

/// Sets `out` to the value `names` spells `text`; false when it spells none.
template <class Value, std::size_t N>
bool value_named(const NamedValue<Value> (&names)[N], const std::string& text, Value& out) {
  for (const NamedValue<Value>& n : names)
    if (text == n.name) {
      out = n.value;
      return true;
    }
  return false;
}

/// Whether `text` is one of `choices`.
template <std::size_t N>
bool is_one_of(const char* const (&choices)[N], const std::string& text) {
  for (const char* choice : choices)
    if (text == choice) return true;
  return false;
}

inline const char* name_text(const char* name) { return name; }
template <class Value>
const char* name_text(const NamedValue<Value>& named) {
  return named.name;
}

/// The names of a list, for an error message: "a", "a or b", "a, b or c".
template <class Named, std::size_t N>
std::string alternatives(const Named (&names)[N]) {
  std::string out;
  for (std::size_t i = 0; i < N; ++i)
    out += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + name_text(names[i]);
  return out;
}

}  // namespace hgad::detail
