// The shipped tuning data (data/*.json) against the kernels of this tree: every row must be fresh,
// so that a template change that alters what shipped rows measured fails here, and the change
// re-tunes those rows (sigattn tune --stale) or, when the kernels' machine code is unchanged,
// re-keys them to the new source hashes.
#include <gtest/gtest.h>

#include <string>

#include "cache/json_io.hpp"
#include "cache/tuning_store.hpp"

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

}  // namespace
}  // namespace sigattn::cache
