// Fixture of the layering check (tests/check_layers.cmake): the runtime includes the CLI.
#pragma once
#include "cli/tune_command.hpp"
