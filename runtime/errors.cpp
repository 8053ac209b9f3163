// The library's error types: Error with a status, and the subclasses that keep the driver call
// and CUresult, or the variant, arch, options and NVRTC log, as fields.
#include "runtime/errors.hpp"

#include <utility>

namespace sigattn {

void throw_invalid(const std::string& message) { throw Error(Status::invalid_argument, message); }

void throw_unsupported(const std::string& message) { throw Error(Status::unsupported, message); }

DriverError::DriverError(std::string call, int result, std::string result_name,
                         const std::string& message)
    : Error(Status::driver_error, message),
      call_(std::move(call)),
      result_(result),
      result_name_(std::move(result_name)) {}

CompileError::CompileError(std::string variant, std::string arch, std::vector<std::string> options,
                           std::string log, const std::string& message)
    : Error(Status::compile_error, message),
      variant_(std::move(variant)),
      arch_(std::move(arch)),
      options_(std::move(options)),
      log_(std::move(log)) {}

}  // namespace sigattn
