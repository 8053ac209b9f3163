// Runs a check in a child process that has no privilege over files beyond their mode bits: as
// user nobody when the tests run as root (root writes read-only files and directories), else as
// the test's own user. Read-only databases are tested this way in either case.
#pragma once

#include <fmt/format.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <exception>
#include <functional>
#include <string>

namespace sigattn::testing {

inline constexpr uid_t kNobody = 65534;

// The check returns what went wrong, empty when nothing did; so does this function, with the
// child's fate added when it did not finish normally.
inline std::string run_unprivileged(const std::function<std::string()>& check) {
  int pipe_ends[2];
  if (::pipe(pipe_ends) != 0) return "pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    ::close(pipe_ends[0]);
    std::string problem;
    if (::geteuid() == 0 &&
        (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0)) {
      problem = "cannot switch to user nobody";
    }
    if (problem.empty()) {
      try {
        problem = check();
      } catch (const std::exception& error) {
        problem = fmt::format("exception: {}", error.what());
      }
    }
    const ssize_t written = ::write(pipe_ends[1], problem.data(), problem.size());
    ::_exit(written == static_cast<ssize_t>(problem.size()) ? 0 : 1);
  }
  ::close(pipe_ends[1]);
  std::string problem;
  char buffer[4096];
  for (ssize_t got; (got = ::read(pipe_ends[0], buffer, sizeof(buffer))) > 0;) {
    problem.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(pipe_ends[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    problem += fmt::format(" (the child process ended with status {:#x})", status);
  }
  return problem;
}

}  // namespace sigattn::testing
