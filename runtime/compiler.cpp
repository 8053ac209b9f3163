// NVRTC compilation straight to CUBIN: the generated program plus every embedded template as an
// in-memory header, the kernel asked for by name expression, the log read before the result is
// checked, and the ptxas report (registers, stack, spills) parsed from that log.
#include "runtime/compiler.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <regex>
#include <sstream>

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

// The ptxas report of one entry function, e.g.
//   ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
//   ptxas info    : Function properties for _Z3fooPf
//       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//   ptxas info    : Used 10 registers, used 0 barriers, 360 bytes cmem[0]
void parse_ptxas_report(const std::string& log, CompiledKernel& kernel) {
  static const std::regex entry(R"(Compiling entry function '([^']+)')");
  static const std::regex properties(R"(Function properties for (\S+))");
  static const std::regex frame(
      R"((\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads)");
  static const std::regex registers(R"(Used (\d+) registers)");
  std::istringstream lines(log);
  std::string line;
  std::string compiling;  // the entry function the "Used N registers" lines belong to
  std::string described;  // the function the next stack-frame line belongs to
  std::smatch match;
  while (std::getline(lines, line)) {
    if (std::regex_search(line, match, entry)) {
      compiling = match[1];
    } else if (std::regex_search(line, match, properties)) {
      described = match[1];
    } else if (std::regex_search(line, match, frame)) {
      if (described == kernel.lowered_name) {
        kernel.stack_frame_bytes = std::stoi(match[1]);
        kernel.spill_store_bytes = std::stoi(match[2]);
        kernel.spill_load_bytes = std::stoi(match[3]);
      }
    } else if (std::regex_search(line, match, registers)) {
      if (compiling == kernel.lowered_name) kernel.registers = std::stoi(match[1]);
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
  std::size_t cubin_size = 0;
  check(api.nvrtcGetCUBINSize(program.get(), &cubin_size), "nvrtcGetCUBINSize", kernel.log);
  if (cubin_size == 0) {
    throw fail("NVRTC produced no CUBIN (is the architecture a real sm_XY one?)", kernel.log);
  }
  kernel.cubin.resize(cubin_size);
  check(api.nvrtcGetCUBIN(program.get(), kernel.cubin.data()), "nvrtcGetCUBIN", kernel.log);

  kernel.variant_name = request.variant_name;
  kernel.arch = request.arch;
  parse_ptxas_report(kernel.log, kernel);
  kernel.compile_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  return kernel;
}

std::vector<std::string> with_arch(std::vector<std::string> options, const std::string& arch) {
  options.push_back("--gpu-architecture=" + arch);
  options.push_back("--ptxas-options=-v");
  return options;
}

void require_supported(const std::string& variant_name, const std::string& arch) {
  if (!arch_supported(arch)) {
    throw_unsupported(fmt::format(
        "cannot compile {} for {}: the architecture must be one of sm_80, sm_86, sm_87, sm_89, "
        "sm_90, sm_90a",
        variant_name, arch));
  }
}

}  // namespace

bool arch_supported(const std::string& arch) {
  static constexpr std::array<std::string_view, 6> kSupported = {"sm_80", "sm_86", "sm_87",
                                                                 "sm_89", "sm_90", "sm_90a"};
  return std::find(kSupported.begin(), kSupported.end(), arch) != kSupported.end();
}

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
