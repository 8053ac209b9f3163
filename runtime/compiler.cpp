// NVRTC compilation straight to CUBIN (or to PTX for a compute_XY target): the generated program
// plus every embedded template as an in-memory header, the kernel asked for by name expression, the
// log read before the result is checked, and the ptxas report (registers, stack, spills) parsed
// from that log (by hand: GCC 12's <regex> trips -Wmaybe-uninitialized in sanitizer builds).
#include "runtime/compiler.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include "generator/architecture.hpp"
#include "generator/template_store.hpp"
#include "runtime/errors.hpp"
#include "runtime/nvrtc.hpp"

namespace sigattn {
namespace {

struct Header {
  std::string name;
  std::string source;
};

// Owns an nvrtcProgram for the duration of one compile.
class Program {
 public:
  explicit Program(const nvrtc::NvrtcApi& api) : api_(api) {}
  ~Program() {
    if (program_ != nullptr) api_.nvrtcDestroyProgram(&program_);
  }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  nvrtcProgram* out() { return &program_; }
  nvrtcProgram get() const { return program_; }

 private:
  const nvrtc::NvrtcApi& api_;
  nvrtcProgram program_ = nullptr;
};

struct CompileRequest {
  std::string variant_name;
  std::string source;
  std::vector<Header> headers;
  std::string name_expression;
  std::vector<std::string> options;  // complete, architecture included
  std::string arch;
};

// The integer that `text` starts with after optional blanks, and the rest; nullopt without one.
std::optional<std::pair<int, std::string_view>> leading_int(std::string_view text) {
  text.remove_prefix(std::min(text.find_first_not_of(" \t"), text.size()));
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc()) return std::nullopt;
  return std::pair{value, text.substr(static_cast<std::size_t>(end - text.data()))};
}

// The text of `line` after `marker`, up to the first of `stops`; nullopt when there is no marker.
std::optional<std::string> after(std::string_view line, std::string_view marker,
                                 std::string_view stops) {
  const std::size_t at = line.find(marker);
  if (at == std::string_view::npos) return std::nullopt;
  const std::string_view rest = line.substr(at + marker.size());
  return std::string(rest.substr(0, rest.find_first_of(stops)));
}

// "N bytes stack frame, N bytes spill stores, N bytes spill loads", anywhere in the line, as its
// three numbers.
std::optional<std::array<int, 3>> frame_line(std::string_view line) {
  const std::size_t unit = line.find(" bytes stack frame");
  if (unit == std::string_view::npos) return std::nullopt;
  const std::size_t digits = line.find_last_not_of("0123456789", unit - 1);
  line.remove_prefix(digits == std::string_view::npos ? 0 : digits + 1);
  std::array<int, 3> values{};
  for (std::size_t i = 0; i < values.size(); ++i) {
    static constexpr std::array<std::string_view, 3> kUnits = {
        " bytes stack frame", " bytes spill stores", " bytes spill loads"};
    const auto number = leading_int(line);
    if (!number || !number->second.starts_with(kUnits[i])) return std::nullopt;
    values[i] = number->first;
    line = number->second.substr(kUnits[i].size());
    if (i + 1 < values.size()) {
      if (!line.starts_with(",")) return std::nullopt;
      line.remove_prefix(1);
    }
  }
  return values;
}

// The ptxas report of one entry function, e.g.
//   ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
//   ptxas info    : Function properties for _Z3fooPf
//       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//   ptxas info    : Used 10 registers, used 0 barriers, 360 bytes cmem[0]
void parse_ptxas_report(const std::string& log, CompiledKernel& kernel) {
  std::istringstream lines(log);
  std::string line;
  std::string compiling;  // the entry function the "Used N registers" lines belong to
  std::string described;  // the function the next stack-frame line belongs to
  while (std::getline(lines, line)) {
    if (auto entry = after(line, "Compiling entry function '", "'")) {
      compiling = std::move(*entry);
    } else if (auto function = after(line, "Function properties for ", " \t\r")) {
      described = std::move(*function);
    } else if (const auto frame = frame_line(line)) {
      if (described == kernel.lowered_name) {
        kernel.stack_frame_bytes = (*frame)[0];
        kernel.spill_store_bytes = (*frame)[1];
        kernel.spill_load_bytes = (*frame)[2];
      }
    } else if (const auto used = after(line, "Used ", "\n")) {
      const auto count = leading_int(*used);
      if (count && count->second.starts_with(" registers") && compiling == kernel.lowered_name) {
        kernel.registers = count->first;
      }
    }
  }
}

std::string read_log(const nvrtc::NvrtcApi& api, nvrtcProgram program) {
  std::size_t size = 0;
  if (api.nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size == 0) return {};
  std::string log(size, '\0');
  if (api.nvrtcGetProgramLog(program, log.data()) != NVRTC_SUCCESS) return {};
  log.resize(log.find('\0') == std::string::npos ? log.size() : log.find('\0'));
  return log;
}

CompiledKernel run_nvrtc(const CompileRequest& request) {
  const auto started = std::chrono::steady_clock::now();
  const nvrtc::NvrtcApi& api = nvrtc::api();
  const auto fail = [&request](const std::string& what, const std::string& log) {
    return CompileError(
        request.variant_name, request.arch, request.options, log,
        fmt::format("compiling {} for {} failed: {}\noptions: {}\n{}", request.variant_name,
                    request.arch, what, fmt::join(request.options, " "), log));
  };
  const auto check = [&](nvrtcResult result, const char* call, const std::string& log) {
    if (result != NVRTC_SUCCESS) {
      throw fail(fmt::format("{}: {}", call, api.nvrtcGetErrorString(result)), log);
    }
  };

  std::vector<const char*> header_sources;
  std::vector<const char*> header_names;
  for (const Header& header : request.headers) {
    header_sources.push_back(header.source.c_str());
    header_names.push_back(header.name.c_str());
  }
  Program program(api);
  check(api.nvrtcCreateProgram(
            program.out(), request.source.c_str(), (request.variant_name + ".cu").c_str(),
            static_cast<int>(request.headers.size()), header_sources.data(), header_names.data()),
        "nvrtcCreateProgram", "");
  check(api.nvrtcAddNameExpression(program.get(), request.name_expression.c_str()),
        "nvrtcAddNameExpression", "");

  std::vector<const char*> options;
  for (const std::string& option : request.options) options.push_back(option.c_str());
  const nvrtcResult compiled =
      api.nvrtcCompileProgram(program.get(), static_cast<int>(options.size()), options.data());
  CompiledKernel kernel;
  kernel.log = read_log(api, program.get());
  check(compiled, "nvrtcCompileProgram", kernel.log);

  const char* lowered = nullptr;
  check(api.nvrtcGetLoweredName(program.get(), request.name_expression.c_str(), &lowered),
        "nvrtcGetLoweredName", kernel.log);
  kernel.lowered_name = lowered;
  if (policy::is_ptx_target(request.arch)) {
    // The size counts the terminating NUL, which cuModuleLoadData needs to read PTX.
    std::size_t ptx_size = 0;
    check(api.nvrtcGetPTXSize(program.get(), &ptx_size), "nvrtcGetPTXSize", kernel.log);
    kernel.cubin.resize(ptx_size);
    check(api.nvrtcGetPTX(program.get(), kernel.cubin.data()), "nvrtcGetPTX", kernel.log);
  } else {
    std::size_t cubin_size = 0;
    check(api.nvrtcGetCUBINSize(program.get(), &cubin_size), "nvrtcGetCUBINSize", kernel.log);
    if (cubin_size == 0) {
      throw fail("NVRTC produced no CUBIN (is the architecture a real sm_XY one?)", kernel.log);
    }
    kernel.cubin.resize(cubin_size);
    check(api.nvrtcGetCUBIN(program.get(), kernel.cubin.data()), "nvrtcGetCUBIN", kernel.log);
  }

  kernel.variant_name = request.variant_name;
  kernel.arch = request.arch;
  parse_ptxas_report(kernel.log, kernel);
  kernel.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return kernel;
}

// The ptxas report (registers, spills) exists only where ptxas runs: not for PTX.
std::vector<std::string> with_arch(std::vector<std::string> options, const std::string& arch) {
  options.push_back("--gpu-architecture=" + arch);
  if (!policy::is_ptx_target(arch)) options.push_back("--ptxas-options=-v");
  return options;
}

void require_supported(const std::string& variant_name, const std::string& arch) {
  if (!arch_supported(arch)) {
    throw_unsupported(fmt::format("cannot compile {} for {}: the architecture must be one of {}",
                                  variant_name, arch, policy::architecture_names()));
  }
}

}  // namespace

bool arch_supported(const std::string& arch) { return policy::find_architecture(arch) != nullptr; }

CompiledKernel compile(const gen::GeneratedKernel& kernel, const std::string& arch) {
  require_supported(kernel.variant_name, arch);
  CompileRequest request{kernel.variant_name,
                         kernel.source,
                         {},
                         kernel.name_expression,
                         with_arch(kernel.options, arch),
                         arch};
  for (const gen::EmbeddedTemplate& header : gen::embedded_templates()) {
    request.headers.push_back({header.name, header.source});
  }
  return run_nvrtc(request);
}

CompiledKernel compile_source(const std::string& name, const std::string& source,
                              const std::string& name_expression,
                              const std::vector<std::string>& options, const std::string& arch) {
  require_supported(name, arch);
  return run_nvrtc({name, source, {}, name_expression, with_arch(options, arch), arch});
}

}  // namespace sigattn
