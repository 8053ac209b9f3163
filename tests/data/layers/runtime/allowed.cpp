// Fixture of the layering check (tests/check_layers.cmake): the runtime includes only layers
// below its own, and mentions a tuner path outside an include.
#include "cache/database.hpp"
#include "generator/generator.hpp"
#include "runtime/forward.hpp"

// "tuner/online_tuning.hpp" installs the hook.
