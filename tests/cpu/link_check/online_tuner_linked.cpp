// A program linked with the static core that refers to nothing of the tuner: the online tuner's
// hook must still be installed, which it is only if the linker kept the tuner's registrar
// (CMakeLists.txt). Exits 0 when it is.
#include <cstdio>

#include "runtime/online_tuning_hook.hpp"

int main() {
  if (sigattn::install_online_tuning_hook(nullptr) != nullptr) return 0;
  std::fputs("the online tuner's hook is not installed: its object file was not linked\n", stderr);
  return 1;
}
