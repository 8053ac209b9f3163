// The shipped tuning data (data/*.json) against the kernels of this tree: every row must be fresh,
// so that a template change that alters what shipped rows measured fails here, and the change
// re-tunes those rows (sigattn tune --stale) or, when the kernels' machine code is unchanged,
// re-keys them to the new source hashes.
#include <gtest/gtest.h>

#include <string>

#include "cache/json_io.hpp"
#include "cache/tuning_store.hpp"
#include "generator/tile_policy.hpp"

namespace sigattn::cache {
namespace {

TEST(ShippedData, EveryRowIsServedFreshForItsProblem) {
  const TuningDocument shipped = read_shipped_directory(SIGATTN_SHIPPED_DATA_DIR);
  ASSERT_FALSE(shipped.results.empty()) << "no shipped data in " << SIGATTN_SHIPPED_DATA_DIR;
  for (const TuningResult& row : shipped.results) {
    const std::string name = row.problem.spec + " q " +
                             std::to_string(row.problem.seqlen_q_bucket) + " k " +
                             std::to_string(row.problem.seqlen_k_bucket) + " on " + row.device.name;
    EXPECT_EQ(row.template_hash, kernel_source_hash(row.problem, row.tile))
        << name << ": the kernel of " << gen::to_string(row.tile)
        << " has changed since it was measured";
    const TileChoice choice =
        choose_tile({}, shipped.results, row.device, gen::parse_spec(row.problem.spec),
                    row.problem.seqlen_q_bucket, row.problem.seqlen_k_bucket,
                    policy::target_for_arch(row.device.arch));
    EXPECT_EQ(choice.served_by, ServedBy::shipped_db) << name << ": " << choice.reason;
    EXPECT_FALSE(choice.stale) << name << ": " << choice.reason;
    EXPECT_EQ(choice.tile, row.tile) << name << ": " << choice.reason;
  }
  for (const TuningCandidate& row : shipped.candidates) {
    EXPECT_TRUE(is_fresh(row)) << "candidate " << gen::to_string(row.tile) << " of "
                               << row.problem.spec << " q " << row.problem.seqlen_q_bucket;
  }
}

// Shipped rows are keyed by device and arch: a Blackwell GPU, for which none are shipped, gets
// the policy's default for its own target at every default spec (forward, both backward kernels)
// and length, not a Hopper row.
TEST(ShippedData, ABlackwellDeviceWithoutRowsGetsThePolicyDefaults) {
  const TuningDocument shipped = read_shipped_directory(SIGATTN_SHIPPED_DATA_DIR);
  for (const DeviceKey& device : {DeviceKey{"NVIDIA B200", "sm_100a", 148},
                                  DeviceKey{"NVIDIA GeForce RTX 5090", "sm_120a", 170}}) {
    const policy::Target target = policy::target_for_arch(device.arch);
    for (const gen::KernelSpec& spec : policy::default_specs()) {
      for (int seqlen : {512, 4096, 16384}) {
        const std::string name =
            gen::to_string(spec) + " L " + std::to_string(seqlen) + " on " + device.name;
        const TileChoice choice =
            choose_tile({}, shipped.results, device, spec, seqlen, seqlen, target);
        EXPECT_EQ(choice.served_by, ServedBy::heuristic) << name << ": " << choice.reason;
        EXPECT_FALSE(choice.stale) << name;
        EXPECT_EQ(choice.tile, policy::default_tile(spec, target).tile) << name;
        EXPECT_EQ(choice.tile.family, gen::Family::sm80) << name;
        EXPECT_EQ(policy::rejection(spec, choice.tile, target), "") << name;
      }
    }
  }
}

}  // namespace
}  // namespace sigattn::cache
