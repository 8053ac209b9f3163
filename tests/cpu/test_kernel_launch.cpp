// The kernel interfaces by family and direction: every kernel has one; the sm80 kernels stream
// nothing through TMA maps and take the direction's parameters as they are; the sm90 kernels take
// them followed by one map per streamed operand, in order, and the persistent ones the dynamic
// schedule's tile counter; the grids are those the kernels expect.
#include <gtest/gtest.h>

#include <initializer_list>
#include <string>
#include <variant>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "runtime/kernel_launch.hpp"

namespace sigattn {
namespace {

// A map whose first word tells it apart.
TmaDescriptor map_numbered(unsigned long long number) {
  TmaDescriptor map{};
  map.words[0] = number;
  return map;
}

DirectionParams params_of(gen::Direction direction) {
  if (direction == gen::Direction::forward) {
    FwdParams params{};
    params.batch = 7;
    return params;
  }
  BwdParams params{};
  params.fwd.batch = 7;
  return params;
}

// The batch, the first words of the maps and the tile counter that `argument` carries.
struct Carried {
  int batch;
  std::vector<unsigned long long> maps;
  const TileCounter* tile_counter = nullptr;
};

Carried carried(const KernelArgument& argument) {
  const auto words = [](std::initializer_list<TmaDescriptor> maps) {
    std::vector<unsigned long long> first;
    for (const TmaDescriptor& map : maps) first.push_back(map.words[0]);
    return first;
  };
  if (const auto* p = std::get_if<FwdParams>(&argument)) return {p->batch, {}};
  if (const auto* p = std::get_if<FwdSm90Params>(&argument)) {
    return {p->base.batch, words({p->q, p->k, p->v}), p->tile_counter};
  }
  if (const auto* p = std::get_if<BwdParams>(&argument)) return {p->fwd.batch, {}};
  if (const auto* p = std::get_if<BwdSm90Params>(&argument)) {
    return {p->base.fwd.batch, words({p->q, p->dout})};
  }
  const auto& p = std::get<BwdDqSm90Params>(argument);
  return {p.base.fwd.batch, words({p.q, p.dout, p.k, p.v}), p.tile_counter};
}

TEST(KernelInterface, EachKernelTakesItsParametersAndOneMapPerStreamedOperand) {
  TileCounter counter{};
  for (const gen::Direction direction :
       {gen::Direction::forward, gen::Direction::dkdv, gen::Direction::dq}) {
    for (const gen::Family family : {gen::Family::sm80, gen::Family::sm90}) {
      SCOPED_TRACE(std::string(gen::to_string(direction)) + " " +
                   std::string(gen::to_string(family)));
      const KernelInterface& kernel = kernel_interface(direction, family);
      EXPECT_EQ(kernel.tma_maps.empty(), family == gen::Family::sm80);
      std::vector<TmaDescriptor> maps;
      std::vector<unsigned long long> numbers;
      for (std::size_t i = 0; i < kernel.tma_maps.size(); ++i) {
        maps.push_back(map_numbered(100 + i));
        numbers.push_back(100 + i);
      }
      const Carried result = carried(kernel.argument(params_of(direction), maps, &counter));
      EXPECT_EQ(result.batch, 7);
      EXPECT_EQ(result.maps, numbers);
      EXPECT_EQ(result.tile_counter, kernel.grid == GridShape::persistent ? &counter : nullptr);
    }
  }
}

TEST(KernelInterface, OperandsGridsAndRows) {
  const KernelInterface& forward = kernel_interface(gen::Direction::forward, gen::Family::sm90);
  const KernelInterface& dkdv = kernel_interface(gen::Direction::dkdv, gen::Family::sm90);
  const KernelInterface& dq = kernel_interface(gen::Direction::dq, gen::Family::sm90);
  EXPECT_EQ(std::vector<Operand>(forward.tma_maps.begin(), forward.tma_maps.end()),
            (std::vector<Operand>{Operand::q, Operand::k, Operand::v}));
  EXPECT_EQ(std::vector<Operand>(dkdv.tma_maps.begin(), dkdv.tma_maps.end()),
            (std::vector<Operand>{Operand::q, Operand::grad_out}));
  EXPECT_EQ(std::vector<Operand>(dq.tma_maps.begin(), dq.tma_maps.end()),
            (std::vector<Operand>{Operand::q, Operand::grad_out, Operand::k, Operand::v}));
  EXPECT_EQ(forward.grid, GridShape::persistent);
  EXPECT_EQ(dq.grid, GridShape::persistent);
  EXPECT_EQ(dkdv.grid, GridShape::persistent_when_dynamic);
  for (const gen::Direction direction :
       {gen::Direction::forward, gen::Direction::dkdv, gen::Direction::dq}) {
    const KernelInterface& sm80 = kernel_interface(direction, gen::Family::sm80);
    const KernelInterface& sm90 = kernel_interface(direction, gen::Family::sm90);
    EXPECT_EQ(sm80.grid, GridShape::one_cta_per_tile);
    EXPECT_EQ(sm80.rows, sm90.rows);
    EXPECT_EQ(sm80.rows, direction == gen::Direction::dkdv ? TileRows::keys : TileRows::queries);
  }
}

}  // namespace
}  // namespace sigattn
