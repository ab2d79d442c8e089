// Errors: one enum per module, each error carrying a message that names the
// offending values.
//
//   enum class MemErrc { kNotMapped = 1, ... };
//   template <> struct ErrcTraits<MemErrc> { domain = "mem"; name(MemErrc) };
//
//   Error e(MemErrc::kNotMapped, fmt::format("gpa {} + len {:#x} not in any region", gpa, len));
//   if (e.is(MemErrc::kNotMapped)) ...
//   spdlog::warn("{}", e);   // "mem.not_mapped: gpa 0x1000 + len 0x2000 not in any region"
//
// An Error is cheap to move; building one allocates its message, which is
// fine because errors are off the fast path.
#pragma once

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fmt/format.h>

namespace vdma {

// Specialise for each module's error enum: `domain` (the module name) and
// `name(code)` (a snake_case name of the code, stable for logs and tests).
template <class E>
struct ErrcTraits;

template <class E>
concept ErrcEnum = std::is_enum_v<E> && requires(E e) {
  { ErrcTraits<E>::domain } -> std::convertible_to<std::string_view>;
  { ErrcTraits<E>::name(e) } -> std::convertible_to<std::string_view>;
};

class Error {
 public:
  template <ErrcEnum E>
  Error(E code, std::string message)
      : domain_(ErrcTraits<E>::domain),
        code_(static_cast<int>(code)),
        name_fn_(&name_of<E>),
        message_(std::move(message)) {}

  // True when this error is `code` of module enum E.
  template <ErrcEnum E>
  [[nodiscard]] bool is(E code) const noexcept {
    return domain_ == ErrcTraits<E>::domain && code_ == static_cast<int>(code);
  }
  template <ErrcEnum E>
  [[nodiscard]] bool is_domain() const noexcept {
    return domain_ == ErrcTraits<E>::domain;
  }

  [[nodiscard]] std::string_view domain() const noexcept { return domain_; }
  [[nodiscard]] int code() const noexcept { return code_; }
  [[nodiscard]] std::string_view code_name() const { return name_fn_(code_); }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  // "domain.code_name: message"
  [[nodiscard]] std::string to_string() const;

  // Prefixes context to the message: "queue 0: " + message.
  [[nodiscard]] Error with_context(std::string_view context) &&;

 private:
  template <ErrcEnum E>
  static std::string_view name_of(int c) {
    return ErrcTraits<E>::name(static_cast<E>(c));
  }

  std::string_view domain_;
  int code_;
  std::string_view (*name_fn_)(int);
  std::string message_;
};

// Errors of the base module itself.
enum class BaseErrc {
  kOverflow = 1,     // address arithmetic wrapped past 2^64
  kInvalidArgument,  // a value outside its documented domain
  kSystem,           // a syscall failed; the message carries errno text
  kTimeout,          // a wait ran out of time (names what it waited for)
};

template <>
struct ErrcTraits<BaseErrc> {
  static constexpr std::string_view domain = "base";
  static std::string_view name(BaseErrc e);
};

// Error from errno after a failed syscall: "what: strerror(errno)".
[[nodiscard]] Error system_error(std::string_view what, int err);

}  // namespace vdma

template <>
struct fmt::formatter<vdma::Error> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const vdma::Error& e, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(e.to_string(), ctx);
  }
};
