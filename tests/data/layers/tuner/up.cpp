// Fixture of the layering check (tests/check_layers.cmake): the tuner includes the CLI.
#include "cli/db_commands.hpp"
#include "runtime/forward.hpp"
