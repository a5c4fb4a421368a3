// Errors as values. g++ 12 has no std::expected, so this is the small
// subset of it the relay needs: a value or an Error with an errno-style code
// and a human context ("open endpoint dns-in: bind 127.0.0.1:53: Address in
// use"). No exception crosses a module boundary.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace sockrelay {

struct Error {
  int code = 0;  // positive errno value, or 0 when no errno applies
  std::string message;

  // "message: strerror(code)" when there is a code.
  std::string describe() const {
    if (code == 0) return message;
    return message + ": " + std::strerror(code);
  }
  // Prefix more context, keeping the code: err.wrap("open endpoint x").
  Error wrap(const std::string& context) const { return Error{code, context + ": " + message}; }
};

inline Error errno_error(std::string message, int code = errno) { return Error{code, std::move(message)}; }
inline Error plain_error(std::string message) { return Error{0, std::move(message)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}
  Result(Error error) : v_(std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

}  // namespace sockrelay
