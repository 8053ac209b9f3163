// Library-internal errors: sigattn::Error subclasses that carry the fields a user needs to act
// (the driver call and its CUresult name; the variant, arch, options and NVRTC log).
#pragma once

#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

namespace sigattn {

[[noreturn]] void throw_invalid(const std::string& message);
[[noreturn]] void throw_unsupported(const std::string& message);

class DriverError : public Error {
 public:
  DriverError(std::string call, int result, std::string result_name, const std::string& message);
  const std::string& call() const noexcept { return call_; }
  int result() const noexcept { return result_; }
  const std::string& result_name() const noexcept { return result_name_; }

 private:
  std::string call_;
  int result_;
  std::string result_name_;
};

class CompileError : public Error {
 public:
  CompileError(std::string variant, std::string arch, std::vector<std::string> options,
               std::string log, const std::string& message);
  const std::string& variant() const noexcept { return variant_; }
  const std::string& arch() const noexcept { return arch_; }
  const std::vector<std::string>& options() const noexcept { return options_; }
  const std::string& log() const noexcept { return log_; }

 private:
  std::string variant_;
  std::string arch_;
  std::vector<std::string> options_;
  std::string log_;
};

}  // namespace sigattn
