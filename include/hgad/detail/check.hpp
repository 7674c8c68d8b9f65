#pragma once
/// \file
/// The library's error type and the argument checks every public function runs before its work.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace hgad {

/// Every error hgad throws on bad input: a shape mismatch, an index out of range, a malformed file.
/// It derives from `std::invalid_argument`, so callers that catch the standard type see it too.
class Error : public std::invalid_argument {
 public:
  explicit Error(const std::string& message) : std::invalid_argument(message) {}
};

/// Training met a NaN or an infinity; the message names the term, the level and the step.
class NonFiniteError : public Error {
 public:
  explicit NonFiniteError(const std::string& message) : Error(message) {}
};

namespace detail {

/// Concatenates the streamable arguments into one message.
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

}  // namespace detail

/// Throws hgad::Error with the concatenated message when `condition` is false. The parts are
/// streamed only then: pass values (a Shape, a number), not strings built for the message, since
/// checks run on every call, some of them once per element.
template <class... Parts>
void check(bool condition, Parts&&... parts) {
  if (!condition) throw Error(detail::concat(std::forward<Parts>(parts)...));
}

}  // namespace hgad
