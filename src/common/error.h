// Errors users see. Every message names the file, line, key or tensor at fault.
// The CLI maps UsageError to exit code 2 and every other exception to exit code 1.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace kdae {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Bad command line: unknown flag, missing argument, malformed value.
struct UsageError : Error {
  using Error::Error;
};

// Concatenates anything streamable: str("tensor ", name, " has shape ", shape).
template <typename... Parts>
std::string str(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(::kdae::str(parts...));
}

template <typename... Parts>
[[noreturn]] void usage_fail(const Parts&... parts) {
  throw UsageError(::kdae::str(parts...));
}

}  // namespace kdae
