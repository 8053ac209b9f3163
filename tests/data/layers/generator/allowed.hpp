// Fixture of the layering check (tests/check_layers.cmake): the generator includes only itself.
#pragma once
#include "generator/kernel_spec.hpp"
