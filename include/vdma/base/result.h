// Result<T>: a value or an Error, with std::expected's API.
//
//   Result<Gpa> end = checked_add(gpa, len);
//   if (!end) return std::move(end).error();    // a Result of any T from an Error
//   use(*end);
//   return make_error(MemErrc::kNotMapped, "gpa {} not mapped", gpa);
//
//   Result<int> parse(...);
//   auto r = parse(s).and_then([](int v) -> Result<int> { ... });
//   Gpa e = VDMA_TRY(checked_add(gpa, len));   // propagates the error
//
// It is our own small type because clang 16 with libstdc++ 12 has no
// <expected>; the member names match std::expected<T, Error>. Unlike
// std::expected it also converts implicitly from an Error (Result<Error> is
// refused, so the conversion is never ambiguous), which spares every error
// return an Unexpected(...) wrapper. value() on an error, or error() on a
// value, is a bug and aborts (VDMA_CHECK) in every build type.
#pragma once

#include <new>
#include <optional>
#include <type_traits>
#include <utility>

#include "vdma/base/check.h"
#include "vdma/base/error.h"

namespace vdma {

template <class E = Error>
class Unexpected {
 public:
  explicit Unexpected(E e) : e_(std::move(e)) {}
  [[nodiscard]] E& error() & noexcept { return e_; }
  [[nodiscard]] const E& error() const& noexcept { return e_; }
  [[nodiscard]] E&& error() && noexcept { return std::move(e_); }

 private:
  E e_;
};

// Shorthand: `return make_error(MemErrc::kNotMapped, "gpa {} not mapped", gpa);`
template <ErrcEnum Code, class... Args>
[[nodiscard]] Error make_error(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return Error(code, fmt::format(f, std::forward<Args>(args)...));
}

template <class T>
class [[nodiscard]] Result;
template <>
class Result<void>;  // declared before use so clang never instantiates the primary for void

namespace detail {
template <class R>
struct is_result : std::false_type {};
template <class U>
struct is_result<Result<U>> : std::true_type {};
}  // namespace detail

template <class T>
class [[nodiscard]] Result {
  static_assert(!std::is_reference_v<T>, "Result<T&> is not supported");
  static_assert(!std::is_same_v<std::remove_cv_t<T>, Error>, "Result<Error> would not know a value from an error");

 public:
  using value_type = T;
  using error_type = Error;

  Result() requires std::is_default_constructible_v<T> : ok_(true) { new (&val_) T(); }
  template <class U = T>
    requires(std::is_constructible_v<T, U&&> && !std::is_same_v<std::remove_cvref_t<U>, Result> &&
             !std::is_same_v<std::remove_cvref_t<U>, Unexpected<Error>> &&
             !std::is_same_v<std::remove_cvref_t<U>, Error>)
  Result(U&& v) : ok_(true) {  // NOLINT: implicit like std::expected
    new (&val_) T(std::forward<U>(v));
  }
  // An error, implicitly: `return std::move(r).error();`, `return make_error(...)`.
  Result(Error e) : ok_(false) { new (&err_) Error(std::move(e)); }                    // NOLINT
  Result(Unexpected<Error> u) : ok_(false) { new (&err_) Error(std::move(u).error()); }  // NOLINT
  Result(const Result& o) : ok_(o.ok_) {
    if (ok_) new (&val_) T(o.val_);
    else new (&err_) Error(o.err_);
  }
  Result(Result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : ok_(o.ok_) {
    if (ok_) new (&val_) T(std::move(o.val_));
    else new (&err_) Error(std::move(o.err_));
  }
  Result& operator=(const Result& o) {
    if (this != &o) {
      destroy();
      ok_ = o.ok_;
      if (ok_) new (&val_) T(o.val_);
      else new (&err_) Error(o.err_);
    }
    return *this;
  }
  Result& operator=(Result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) {
    if (this != &o) {
      destroy();
      ok_ = o.ok_;
      if (ok_) new (&val_) T(std::move(o.val_));
      else new (&err_) Error(std::move(o.err_));
    }
    return *this;
  }
  ~Result() { destroy(); }

  [[nodiscard]] bool has_value() const noexcept { return ok_; }
  explicit operator bool() const noexcept { return ok_; }

  T& value() & {
    VDMA_CHECK(ok_, "Result::value() on an error");
    return val_;
  }
  const T& value() const& {
    VDMA_CHECK(ok_, "Result::value() on an error");
    return val_;
  }
  T&& value() && {
    VDMA_CHECK(ok_, "Result::value() on an error");
    return std::move(val_);
  }
  Error& error() & {
    VDMA_CHECK(!ok_, "Result::error() on a value");
    return err_;
  }
  const Error& error() const& {
    VDMA_CHECK(!ok_, "Result::error() on a value");
    return err_;
  }
  Error&& error() && {
    VDMA_CHECK(!ok_, "Result::error() on a value");
    return std::move(err_);
  }

  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  template <class U>
  [[nodiscard]] T value_or(U&& fallback) const& {
    return ok_ ? val_ : static_cast<T>(std::forward<U>(fallback));
  }
  template <class U>
  [[nodiscard]] T value_or(U&& fallback) && {
    return ok_ ? std::move(val_) : static_cast<T>(std::forward<U>(fallback));
  }

  // f: T -> Result<U>
  template <class F>
  auto and_then(F&& f) & { return ok_ ? std::forward<F>(f)(val_) : decltype(f(val_))(Unexpected(err_)); }
  template <class F>
  auto and_then(F&& f) const& { return ok_ ? std::forward<F>(f)(val_) : decltype(f(val_))(Unexpected(err_)); }
  template <class F>
  auto and_then(F&& f) && {
    using R = decltype(f(std::move(val_)));
    static_assert(detail::is_result<R>::value, "and_then must return a Result");
    return ok_ ? std::forward<F>(f)(std::move(val_)) : R(Unexpected(std::move(err_)));
  }
  // f: T -> U ; gives Result<U>
  template <class F>
  auto transform(F&& f) const& {
    using U = std::remove_cvref_t<decltype(f(val_))>;
    if constexpr (std::is_void_v<U>) {
      // Result<U> (U = void) keeps the expression dependent: Result<void> is
      // only complete further down.
      if (!ok_) return Result<U>(Unexpected(err_));
      std::forward<F>(f)(val_);
      return Result<U>();
    } else {
      return ok_ ? Result<U>(std::forward<F>(f)(val_)) : Result<U>(Unexpected(err_));
    }
  }
  // f: Error -> Result<T>
  template <class F>
  Result or_else(F&& f) && {
    return ok_ ? Result(std::move(val_)) : std::forward<F>(f)(std::move(err_));
  }
  // f: Error -> Error
  template <class F>
  Result transform_error(F&& f) && {
    return ok_ ? Result(std::move(val_)) : Result(Unexpected(std::forward<F>(f)(std::move(err_))));
  }

 private:
  void destroy() noexcept {
    if (ok_) val_.~T();
    else err_.~Error();
  }

  bool ok_;
  union {
    T val_;
    Error err_;
  };
};

template <>
class [[nodiscard]] Result<void> {
 public:
  using value_type = void;
  using error_type = Error;

  // Success holds no Error at all: no string is built on the fast path.
  Result() noexcept = default;
  Result(Error e) : err_(std::move(e)) {}                       // NOLINT: an error, implicitly
  Result(Unexpected<Error> u) : err_(std::move(u).error()) {}  // NOLINT
  Result(const Result&) = default;
  Result(Result&&) noexcept = default;
  Result& operator=(const Result&) = default;
  Result& operator=(Result&&) noexcept = default;

  [[nodiscard]] bool has_value() const noexcept { return !err_.has_value(); }
  explicit operator bool() const noexcept { return has_value(); }
  void value() const { VDMA_CHECK(has_value(), "Result<void>::value() on an error"); }
  void operator*() const { value(); }
  Error& error() & {
    VDMA_CHECK(!has_value(), "Result::error() on a value");
    return *err_;
  }
  const Error& error() const& {
    VDMA_CHECK(!has_value(), "Result::error() on a value");
    return *err_;
  }
  Error&& error() && {
    VDMA_CHECK(!has_value(), "Result::error() on a value");
    return std::move(*err_);
  }

  template <class F>
  auto and_then(F&& f) const {
    using R = decltype(f());
    static_assert(detail::is_result<R>::value, "and_then must return a Result");
    return has_value() ? std::forward<F>(f)() : R(Unexpected(*err_));
  }
  template <class F>
  Result or_else(F&& f) && {
    return has_value() ? Result() : std::forward<F>(f)(std::move(*err_));
  }
  template <class F>
  Result transform_error(F&& f) && {
    return has_value() ? Result() : Result(Unexpected(std::forward<F>(f)(std::move(*err_))));
  }

 private:
  std::optional<Error> err_;
};

inline Result<void> ok() { return {}; }

}  // namespace vdma

// Evaluates a Result expression; on error returns it from the enclosing
// function (which must return some Result), otherwise yields the value.
// Uses a GNU statement expression (g++ and clang both support it).
#define VDMA_TRY(expr)                                                  \
  ({                                                                    \
    auto&& vdma_try_r_ = (expr);                                        \
    if (!vdma_try_r_.has_value()) {                                     \
      return ::vdma::Unexpected<::vdma::Error>(std::move(vdma_try_r_).error()); \
    }                                                                   \
    std::move(vdma_try_r_).value();                                     \
  })
