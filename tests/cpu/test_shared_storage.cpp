// Shared-memory layouts (templates/sigattn/shared_storage.h): every buffer starts where its
// readers need it (16 bytes for cp.async and ldmatrix rows, 1024 bytes for the 128-byte swizzle
// of TMA and wgmma, 8 bytes for mbarriers), no two buffers overlap, everything fits in the bytes
// the kernel asks for, and those bytes are what generate() reports.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "generator/generator.hpp"
#include "sigattn/decode_storage.h"
#include "sigattn/shared_storage.h"

namespace sigattn {
namespace {

struct NamedBuffer {
  std::string name;
  SmemBuffer buffer;
  int alignment;
};

// Checks one layout: alignment of each buffer and of each slot, no overlaps, all inside `end`.
void expect_sound(const std::vector<NamedBuffer>& buffers, int end, const std::string& context) {
  std::vector<NamedBuffer> used;
  for (const NamedBuffer& b : buffers) {
    EXPECT_EQ(b.buffer.offset % b.alignment, 0) << context << ": " << b.name;
    if (b.buffer.count > 1) {
      EXPECT_EQ(b.buffer.slot_bytes % b.alignment, 0) << context << ": slots of " << b.name;
    }
    EXPECT_LE(b.buffer.end(), end) << context << ": " << b.name;
    if (b.buffer.count > 0) used.push_back(b);
  }
  std::sort(used.begin(), used.end(), [](const NamedBuffer& a, const NamedBuffer& b) {
    return a.buffer.offset < b.buffer.offset;
  });
  for (std::size_t i = 1; i < used.size(); ++i) {
    EXPECT_LE(used[i - 1].buffer.end(), used[i].buffer.offset)
        << context << ": " << used[i - 1].name << " overlaps " << used[i].name;
  }
}

std::string tile_context(const char* kernel, int head_dim, int block_m, int block_n, int stages) {
  return std::string(kernel) + " d" + std::to_string(head_dim) + " m" + std::to_string(block_m) +
         " n" + std::to_string(block_n) + " s" + std::to_string(stages);
}

constexpr int kHeadDims[] = {8, 40, 64, 72, 96, 128, 136, 200, 256};
constexpr int kBlocks[] = {16, 32, 48, 64, 128, 192, 256};

TEST(SharedStorage, Sm80LayoutsAreAlignedDisjointAndComplete) {
  for (int d : kHeadDims) {
    for (int m : kBlocks) {
      for (int n : kBlocks) {
        for (int stages = 2; stages <= 4; ++stages) {
          const int a = sm80_alignment();
          for (const RowBlockSm80Storage& s :
               {fwd_sm80_storage(d, m, n, stages), bwd_dq_sm80_storage(d, m, n, stages)}) {
            expect_sound({{"q", s.q, a}, {"dout", s.dout, a}, {"k", s.k, a}, {"v", s.v, a}},
                         s.bytes, tile_context("row block sm80", d, m, n, stages));
            EXPECT_EQ(s.bytes, s.v.end());
          }
          EXPECT_EQ(fwd_sm80_storage(d, m, n, stages).dout.count, 0);
          for (bool atomic_dq : {false, true}) {
            const BwdDkdvSm80Storage k = bwd_dkdv_sm80_storage(d, m, n, stages, atomic_dq);
            expect_sound(
                {{"k", k.k, a}, {"v", k.v, a}, {"q", k.q, a}, {"dout", k.dout, a}, {"ds", k.ds, a}},
                k.bytes, tile_context("dkdv sm80", d, m, n, stages));
            EXPECT_EQ(k.ds.count, atomic_dq ? 1 : 0);
          }
        }
      }
    }
  }
}

// Rows of 16-byte units: an odd count puts the eight rows of an ldmatrix phase in distinct banks.
TEST(SharedStorage, Sm80RowsAreAnOddNumberOf16ByteUnits) {
  for (int d : kHeadDims) {
    EXPECT_EQ(fwd_sm80_row_stride(d) * element_bytes() / 16 % 2, 1) << d;
    EXPECT_GE(fwd_sm80_row_stride(d), sm80_padded_dim(d));
    EXPECT_GE(sm80_sliced_dim(d), sm80_padded_dim(d)) << d;
    EXPECT_EQ(sm80_slice_width(d) % 16, 0) << d;
  }
  for (int m : kBlocks) EXPECT_EQ(sm80_ds_row_stride(m) * element_bytes() % 16, 0) << m;
}

TEST(SharedStorage, Sm90LayoutsAreAlignedDisjointAndComplete) {
  const int t = sm90_tile_alignment();
  const int b = sm90_barrier_bytes();
  for (int d : {64, 128, 192, 256}) {
    for (int m : {64, 128, 192}) {
      for (int n : {16, 32, 48, 64, 128, 176, 256}) {
        for (int stages = 2; stages <= 4; ++stages) {
          for (bool dynamic : {false, true}) {
            const RowBlockSm90Storage layouts[] = {
                fwd_sm90_storage(d, m, n, stages, dynamic),
                bwd_dq_sm90_storage(d, m, n, stages, dynamic, false),
                bwd_dq_sm90_storage(d, 64, n, stages, dynamic, true)};
            for (int i = 0; i < 3; ++i) {
              const RowBlockSm90Storage& s = layouts[i];
              const bool column_split = i == 2;
              const std::string context = tile_context("row block sm90", d, m, n, stages) +
                                          (dynamic ? " dynamic" : "") +
                                          (column_split ? " column split" : "");
              // The slack before the base is not part of the layout's offsets.
              expect_sound({{"q", s.q, t},
                            {"dout", s.dout, t},
                            {"k", s.k, t},
                            {"v", s.v, t},
                            {"slopes", s.slopes, t},
                            {"ds", s.ds, t},
                            {"bar_full", s.bar_full, b},
                            {"bar_empty", s.bar_empty, b},
                            {"bar_q", s.bar_q, b},
                            {"bar_q_empty", s.bar_q_empty, b},
                            {"bar_slopes_full", s.bar_slopes_full, b},
                            {"bar_slopes_empty", s.bar_slopes_empty, b},
                            {"bar_ds_full", s.bar_ds_full, b},
                            {"bar_ds_empty", s.bar_ds_empty, b},
                            {"work_tiles", s.work_tiles, sm90_work_tile_bytes()}},
                           s.bytes - sm90_base_slack(), context);
              // Each 64-column block of a tile starts on a swizzle atom.
              EXPECT_EQ(m * 128 % t, 0) << context;
              EXPECT_EQ(n * 128 % t, 0) << context;
              EXPECT_EQ(s.bar_full.count, stages) << context;
              EXPECT_EQ(s.work_tiles.count, dynamic ? 3 : 0) << context;
              // The exchange: 64 rows of block_n slopes; dS in whole 128-byte rows of 64 keys.
              EXPECT_EQ(s.slopes.count, column_split ? 2 : 0) << context;
              EXPECT_EQ(s.ds.count, column_split ? 2 : 0) << context;
              EXPECT_EQ(s.bar_ds_empty.count, column_split ? 2 : 0) << context;
              EXPECT_EQ(s.slopes.slot_bytes, 64 * n * 2) << context;
              EXPECT_EQ(s.ds.slot_bytes, 64 * round_up(n, 64) * 2) << context;
            }
          }
          for (bool atomic_dq : {false, true}) {
            if (n != 128) continue;
            for (bool dynamic : {false, true}) {
              const BwdDkdvSm90Storage s =
                  bwd_dkdv_sm90_storage(d, m, n, stages, atomic_dq, dynamic);
              const std::string context = tile_context("dkdv sm90", d, m, n, stages);
              expect_sound({{"k", s.k, t},
                            {"v", s.v, t},
                            {"q", s.q, t},
                            {"dout", s.dout, t},
                            {"ds", s.ds, t},
                            {"bar_full", s.bar_full, b},
                            {"bar_empty", s.bar_empty, b},
                            {"bar_kv", s.bar_kv, b},
                            {"bar_ds_full", s.bar_ds_full, b},
                            {"bar_ds_empty", s.bar_ds_empty, b},
                            {"bar_kv_empty", s.bar_kv_empty, b},
                            {"work_tiles", s.work_tiles, sm90_work_tile_bytes()}},
                           s.bytes - sm90_base_slack(), context);
              EXPECT_EQ(s.ds.count, atomic_dq ? 2 : 0) << context;
              EXPECT_EQ(s.bar_kv_empty.count, dynamic ? 1 : 0) << context;
              EXPECT_EQ(s.work_tiles.count, dynamic ? 3 : 0) << context;
            }
          }
        }
      }
    }
  }
}

// The barriers of the deepest ring, and the dynamic schedule's work tile slots, still fit in the
// 128 bytes after the tiles.
TEST(SharedStorage, Sm90BarriersTakeOneGranuleAfterTheTiles) {
  for (bool dynamic : {false, true}) {
    const RowBlockSm90Storage row = bwd_dq_sm90_storage(128, 128, 64, 4, dynamic, false);
    EXPECT_EQ(row.bytes, sm90_base_slack() + row.v.end() + sm90_barrier_area_granule());
  }
  const BwdDkdvSm90Storage dkdv = bwd_dkdv_sm90_storage(128, 64, 128, 4, true, false);
  EXPECT_EQ(dkdv.bytes, sm90_base_slack() + dkdv.ds.end() + sm90_barrier_area_granule());
}

// The decode kernel: Q, the K/V ring and P, sound as the other sm80 layouts, P's rows an odd number
// of 16-byte units like theirs.
TEST(SharedStorage, DecodeLayoutsAreAlignedDisjointAndComplete) {
  for (int head_dim : kHeadDims) {
    for (int block_m : {16, 32, 64}) {
      for (int block_n : {32, 64, 128}) {
        for (int stages : {2, 3, 4}) {
          const DecodeSm80Storage s = decode_sm80_storage(head_dim, block_m, block_n, stages);
          const std::string context = tile_context("decode", head_dim, block_m, block_n, stages);
          expect_sound({{"q", s.q, 16}, {"k", s.k, 16}, {"v", s.v, 16}, {"p", s.p, 16}}, s.bytes,
                       context);
          EXPECT_EQ(s.bytes, s.p.end()) << context;
          EXPECT_EQ(s.p.slot_bytes, block_m * decode_p_row_stride(block_n) * 2) << context;
          EXPECT_EQ(decode_p_row_stride(block_n) * 2 / 16 % 2, 1) << context;
        }
      }
    }
  }
}

// generate() reports the layout's bytes; the tiles are legal ones of each kernel.
TEST(SharedStorage, TotalsAreWhatTheGeneratorReports) {
  struct Case {
    const char* variant;
    int bytes;
  };
  const Case cases[] = {
      {"fwd.bf16.d128.dense.nomask.nosmod.fast.anylen/sm80.m128n64w4s2",
       fwd_sm80_storage(128, 128, 64, 2).bytes},
      {"fwd.fp16.d40.varlen.causal.nosmod.fast.anylen/sm80.m64n32w4s3",
       fwd_sm80_storage(40, 64, 32, 3).bytes},
      {"dq.bf16.d256.padded.causal.nosmod.fast.anylen/sm80.m64n32w4s2",
       bwd_dq_sm80_storage(256, 64, 32, 2).bytes},
      {"dkdv.bf16.d64.dense.nomask.nosmod.fast.anylen/sm80.m64n128w8s2.atomicdq",
       bwd_dkdv_sm80_storage(64, 64, 128, 2, true).bytes},
      {"dkdv.bf16.d200.dense.nomask.nosmod.fast.anylen/sm80.m32n64w4s3",
       bwd_dkdv_sm80_storage(200, 32, 64, 3, false).bytes},
      {"fwd.bf16.d256.dense.causal.nosmod.fast.anylen/sm90.m128n64w12s2",
       fwd_sm90_storage(256, 128, 64, 2, false).bytes},
      {"fwd.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m128n128w12s3.dynamic",
       fwd_sm90_storage(128, 128, 128, 3, true).bytes},
      {"dq.fp16.d64.varlen.nomask.nosmod.fast.anylen/sm90.m64n64w8s3",
       bwd_dq_sm90_storage(64, 64, 64, 3, false, false).bytes},
      {"dq.bf16.d128.padded.window.nosmod.fast.anylen/sm90.m128n64w12s3.dynamic",
       bwd_dq_sm90_storage(128, 128, 64, 3, true, false).bytes},
      {"dq.bf16.d256.varlen.causal.smod.fast.anylen/sm90.m64n64w12s2.dynamic",
       bwd_dq_sm90_storage(256, 64, 64, 2, true, true).bytes},
      {"dkdv.bf16.d128.padded.causal.nosmod.fast.anylen/sm90.m64n128w12s2.atomicdq",
       bwd_dkdv_sm90_storage(128, 64, 128, 2, true, false).bytes},
      {"dkdv.bf16.d128.varlen.causal.nosmod.fast.anylen/sm90.m64n128w12s2.atomicdq.dynamic",
       bwd_dkdv_sm90_storage(128, 64, 128, 2, true, true).bytes},
      {"dkdv.bf16.d64.dense.nomask.nosmod.fast.anylen/sm90.m128n128w12s4",
       bwd_dkdv_sm90_storage(64, 128, 128, 4, false, false).bytes},
      {"decode.bf16.d128.paged.causal.nosmod.fast.anylen/sm80.m16n64w4s3",
       decode_sm80_storage(128, 16, 64, 3).bytes},
      {"decode.fp16.d40.padded.nomask.smod.fast.anylen/sm80.m64n32w2s2",
       decode_sm80_storage(40, 64, 32, 2).bytes},
  };
  for (const Case& c : cases) {
    const gen::ParsedVariant parsed = gen::parse_variant(c.variant);
    const gen::GeneratedKernel kernel = gen::generate({parsed.spec, parsed.tile.value()});
    EXPECT_EQ(kernel.smem_bytes, c.bytes) << c.variant;
    EXPECT_NE(kernel.source.find("kSmemBytes = " + std::to_string(c.bytes) + ";"),
              std::string::npos)
        << c.variant;
  }
}

}  // namespace
}  // namespace sigattn
