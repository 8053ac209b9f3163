// forward_with_kvcache against an fp64 CPU reference of the KV-cache semantics: contiguous and
// paged caches, GQA ratios 1 to 16, one and several query rows (decode, speculative decoding,
// chunked prefill), with and without appended tokens, causal and window masks, score_mod, the
// bias override, cache lengths 0, 1 and on block boundaries, split counts from 1 to many. The
// cache past every sequence's length holds NaNs and the output starts as NaNs, so a read of an
// unwritten position or a row left unwritten shows. The append is checked in the cache itself;
// split results match unsplit ones to the output's rounding; bad lengths and block table entries
// are refused before anything is written.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <sigattn/sigattn.hpp>
#include <string>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "generator/tile_policy.hpp"
#include "gpu_test_env.hpp"
#include "numerics.hpp"
#include "runtime/cuda_driver.hpp"
#include "runtime/kvcache.hpp"
#include "runtime/validation.hpp"

namespace sigattn::test {
namespace {

// One KV-cache call: sizes, the cache's layout and lengths, and the options.
struct KvProblem {
  std::string name;
  DType dtype = DType::bf16;
  int head_dim = 128;
  int heads_q = 8;
  int heads_kv = 8;
  int seqlen_q = 1;
  int seqlen_new = 0;
  int capacity = 256;           // positions per sequence; paged: max_blocks * block_size
  int block_size = 0;           // 0: contiguous
  std::vector<int> cache_lens;  // before the append; batch = its size
  bool causal = true;
  int window_left = -1;
  int window_right = -1;
  bool score_mod = false;
  std::optional<float> bias;
  SigmoidMode sigmoid = SigmoidMode::fast;

  int batch() const { return static_cast<int>(cache_lens.size()); }
  bool paged() const { return block_size > 0; }
  int max_blocks() const { return paged() ? capacity / block_size : 0; }
  // Every sequence's blocks plus three no sequence uses.
  int num_blocks() const { return batch() * max_blocks() + 3; }
  int len_after(int b) const { return cache_lens[b] + seqlen_new; }
};

KvProblem decode(std::string name, int heads_q, int heads_kv, std::vector<int> lens) {
  KvProblem p;
  p.name = std::move(name);
  p.heads_q = heads_q;
  p.heads_kv = heads_kv;
  p.cache_lens = std::move(lens);
  return p;
}

std::vector<KvProblem> problems() {
  std::vector<KvProblem> all;
  {  // MHA decode with one new token; empty, one-token and full caches.
    KvProblem p = decode("contiguous_mha_append", 8, 8, {0, 1, 298});
    p.capacity = 300;
    p.seqlen_new = 1;
    all.push_back(p);
  }
  {  // GQA 4:1 (32:8) without an append, long caches.
    KvProblem p = decode("contiguous_gqa4_read", 32, 8, {1000, 64, 999});
    p.capacity = 1000;
    all.push_back(p);
  }
  {  // GQA 8:1 paged, lengths after the append on and around block boundaries.
    KvProblem p = decode("paged_gqa8_boundaries", 16, 2, {15, 16, 31, 0});
    p.block_size = 16;
    p.capacity = 16 * 20;
    p.seqlen_new = 1;
    all.push_back(p);
  }
  {  // Speculative decoding: 4 query rows, causal + window, fp16, d64.
    KvProblem p = decode("paged_speculative_window", 8, 2, {0, 28, 60});
    p.dtype = DType::fp16;
    p.head_dim = 64;
    p.block_size = 32;
    p.capacity = 32 * 4;
    p.seqlen_q = p.seqlen_new = 4;
    p.window_left = 20;
    all.push_back(p);
  }
  {  // d256, blocks of 256, score_mod, the bias override, the accurate sigmoid.
    KvProblem p = decode("paged_d256_smod_bias", 4, 4, {700, 5});
    p.head_dim = 256;
    p.block_size = 256;
    p.capacity = 256 * 3;
    p.seqlen_q = 3;
    p.score_mod = true;
    p.bias = -6.0f;
    p.sigmoid = SigmoidMode::accurate;
    all.push_back(p);
  }
  {  // Bidirectional with a two-sided window, GQA 3:1, 21 rows (two row blocks), d40.
    KvProblem p = decode("contiguous_window_two_row_blocks", 6, 2, {50, 0});
    p.dtype = DType::fp16;
    p.head_dim = 40;
    p.capacity = 64;
    p.seqlen_q = p.seqlen_new = 7;
    p.causal = false;
    p.window_left = 10;
    p.window_right = 3;
    all.push_back(p);
  }
  {  // Chunked prefill: 37 new tokens attend causally to the cache and to each other.
    KvProblem p = decode("contiguous_chunked_prefill", 32, 8, {0, 100});
    p.capacity = 160;
    p.seqlen_q = p.seqlen_new = 37;
    all.push_back(p);
  }
  {  // MQA 16:1, blocks of 64, two query rows.
    KvProblem p = decode("paged_mqa_two_rows", 16, 1, {127, 62, 1});
    p.head_dim = 64;
    p.block_size = 64;
    p.capacity = 64 * 4;
    p.seqlen_q = p.seqlen_new = 2;
    p.score_mod = true;
    all.push_back(p);
  }
  return all;
}

// Host copies of every tensor of a call, as stored.
struct KvHost {
  std::vector<std::uint16_t> q, k_cache, v_cache, k_new, v_new;
  std::vector<std::int32_t> cache_seqlens, block_table;
  std::vector<float> score_mod;
};

std::int64_t q_elements(const KvProblem& p) {
  return std::int64_t{p.batch()} * p.seqlen_q * p.heads_q * p.head_dim;
}
std::int64_t cache_rows(const KvProblem& p) {
  return p.paged() ? std::int64_t{p.num_blocks()} * p.block_size
                   : std::int64_t{p.batch()} * p.capacity;
}
std::int64_t cache_elements(const KvProblem& p) { return cache_rows(p) * p.heads_kv * p.head_dim; }
std::int64_t new_elements(const KvProblem& p) {
  return std::int64_t{p.batch()} * p.seqlen_new * p.heads_kv * p.head_dim;
}

// The cache row (block * block_size + slot, or b * capacity + pos) of position pos of sequence b.
std::int64_t cache_row(const KvProblem& p, const KvHost& h, int b, int pos) {
  if (!p.paged()) return std::int64_t{b} * p.capacity + pos;
  return std::int64_t{h.block_table[b * p.max_blocks() + pos / p.block_size]} * p.block_size +
         pos % p.block_size;
}

std::uint16_t nan_bits(DType dtype) { return dtype == DType::bf16 ? 0x7FC0 : 0x7E00; }

KvHost make_host(const KvProblem& p, std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const auto random_bits = [&](std::int64_t count) {
    std::vector<std::uint16_t> bits(count);
    for (auto& b : bits) b = to_bits(p.dtype, normal(engine));
    return bits;
  };
  KvHost h;
  h.q = random_bits(q_elements(p));
  h.k_new = random_bits(new_elements(p));
  h.v_new = random_bits(new_elements(p));
  h.cache_seqlens = p.cache_lens;
  if (p.paged()) {
    // Every sequence's blocks in a shuffled order; entries past a sequence's use stay -1.
    std::vector<std::int32_t> blocks(p.num_blocks());
    for (int i = 0; i < p.num_blocks(); ++i) blocks[i] = i;
    std::shuffle(blocks.begin(), blocks.end(), engine);
    h.block_table.assign(std::size_t(p.batch()) * p.max_blocks(), -1);
    for (int b = 0; b < p.batch(); ++b) {
      const int used = (p.len_after(b) + p.block_size - 1) / p.block_size;
      for (int i = 0; i < used; ++i)
        h.block_table[b * p.max_blocks() + i] = blocks[b * p.max_blocks() + i];
    }
  }
  // The cache holds NaNs everywhere but the positions before each sequence's length.
  h.k_cache.assign(cache_elements(p), nan_bits(p.dtype));
  h.v_cache.assign(cache_elements(p), nan_bits(p.dtype));
  const std::int64_t row = std::int64_t{p.heads_kv} * p.head_dim;
  for (int b = 0; b < p.batch(); ++b) {
    for (int pos = 0; pos < p.cache_lens[b]; ++pos) {
      const std::int64_t at = cache_row(p, h, b, pos) * row;
      for (std::int64_t e = 0; e < row; ++e) {
        h.k_cache[at + e] = to_bits(p.dtype, normal(engine));
        h.v_cache[at + e] = to_bits(p.dtype, normal(engine));
      }
    }
  }
  if (p.score_mod) {
    h.score_mod.resize(std::size_t(p.batch()) * p.capacity);
    for (auto& m : h.score_mod) m = 0.5f * normal(engine);
  }
  return h;
}

// The cache after the append: new token t of sequence b at position cache_lens[b] + t.
KvHost appended(const KvProblem& p, KvHost h) {
  const std::int64_t row = std::int64_t{p.heads_kv} * p.head_dim;
  for (int b = 0; b < p.batch(); ++b) {
    for (int t = 0; t < p.seqlen_new; ++t) {
      const std::int64_t at = cache_row(p, h, b, p.cache_lens[b] + t) * row;
      const std::int64_t from = (std::int64_t{b} * p.seqlen_new + t) * row;
      std::copy_n(h.k_new.begin() + from, row, h.k_cache.begin() + at);
      std::copy_n(h.v_new.begin() + from, row, h.v_cache.begin() + at);
    }
  }
  return h;
}

// O in fp64 from the cache after the append, [batch, seqlen_q, heads_q, head_dim].
std::vector<double> reference(const KvProblem& p, const KvHost& after) {
  const auto value = [&](std::uint16_t bits) { return double{from_bits(p.dtype, bits)}; };
  const double scale = 1.0 / std::sqrt(double(p.head_dim));
  const int group = p.heads_q / p.heads_kv;
  std::vector<double> out(q_elements(p), 0.0);
  for (int b = 0; b < p.batch(); ++b) {
    const int len = p.len_after(b);
    const double bias = p.bias ? double{*p.bias} : -std::log(double(len));
    for (int i = 0; i < p.seqlen_q; ++i) {
      const int pos = len - p.seqlen_q + i;
      for (int h = 0; h < p.heads_q; ++h) {
        const std::int64_t q_at = ((std::int64_t{b} * p.seqlen_q + i) * p.heads_q + h) * p.head_dim;
        for (int j = 0; j < len; ++j) {
          if (p.causal && j > pos) continue;
          if (p.window_right >= 0 && j > pos + p.window_right) continue;
          if (p.window_left >= 0 && j < pos - p.window_left) continue;
          const std::int64_t kv_at =
              (cache_row(p, after, b, j) * p.heads_kv + h / group) * p.head_dim;
          double dot = 0.0;
          for (int d = 0; d < p.head_dim; ++d) {
            dot += value(after.q[q_at + d]) * value(after.k_cache[kv_at + d]);
          }
          double x = scale * dot + bias;
          if (p.score_mod) x += after.score_mod[std::size_t(b) * p.capacity + j];
          const double prob = 1.0 / (1.0 + std::exp(-x));
          for (int d = 0; d < p.head_dim; ++d)
            out[q_at + d] += prob * value(after.v_cache[kv_at + d]);
        }
      }
    }
  }
  return out;
}

// The device tensors of a call, uploaded from `h`, and the arguments that describe them.
struct KvDevice {
  cuda::DeviceBuffer q, out, k_cache, v_cache, k_new, v_new, cache_seqlens, block_table, score_mod;
  KvCacheArgs args;
};

template <class T>
cuda::DeviceBuffer upload(const std::vector<T>& host) {
  cuda::DeviceBuffer buffer(std::max<std::size_t>(host.size() * sizeof(T), 16));
  if (!host.empty()) buffer.upload(host.data(), host.size() * sizeof(T));
  return buffer;
}

KvDevice make_device(const KvProblem& p, const KvHost& h) {
  KvDevice dev;
  dev.q = upload(h.q);
  dev.out = cuda::DeviceBuffer(q_elements(p) * 2);
  dev.out.fill_bytes(0xFF);  // NaN: a row the call does not write shows
  dev.k_cache = upload(h.k_cache);
  dev.v_cache = upload(h.v_cache);
  dev.k_new = upload(h.k_new);
  dev.v_new = upload(h.v_new);
  dev.cache_seqlens = upload(h.cache_seqlens);
  KvCacheArgs& a = dev.args;
  a.dtype = p.dtype;
  a.batch = p.batch();
  a.heads_q = p.heads_q;
  a.heads_kv = p.heads_kv;
  a.head_dim = p.head_dim;
  a.seqlen_q = p.seqlen_q;
  a.q = bthd(dev.q.get(), p.seqlen_q, p.heads_q, p.head_dim);
  a.out = bthd(dev.out.get(), p.seqlen_q, p.heads_q, p.head_dim);
  const int rows = p.paged() ? p.block_size : p.capacity;
  a.k_cache = bthd(dev.k_cache.get(), rows, p.heads_kv, p.head_dim);
  a.v_cache = bthd(dev.v_cache.get(), rows, p.heads_kv, p.head_dim);
  if (p.paged()) {
    dev.block_table = upload(h.block_table);
    a.block_table = static_cast<const std::int32_t*>(dev.block_table.get());
    a.block_table_batch_stride = p.max_blocks();
    a.max_blocks = p.max_blocks();
    a.num_blocks = p.num_blocks();
    a.block_size = p.block_size;
  } else {
    a.max_cache_len = p.capacity;
  }
  a.cache_seqlens = static_cast<const std::int32_t*>(dev.cache_seqlens.get());
  if (p.seqlen_new > 0) {
    a.k_new = bthd(dev.k_new.get(), p.seqlen_new, p.heads_kv, p.head_dim);
    a.v_new = bthd(dev.v_new.get(), p.seqlen_new, p.heads_kv, p.head_dim);
    a.seqlen_new = p.seqlen_new;
  }
  if (p.score_mod) {
    dev.score_mod = upload(h.score_mod);
    a.score_mod = static_cast<const float*>(dev.score_mod.get());
    a.score_mod_batch_stride = p.capacity;
  }
  a.causal = p.causal;
  a.window_left = p.window_left;
  a.window_right = p.window_right;
  a.bias = p.bias;
  a.sigmoid = p.sigmoid;
  return dev;
}

std::vector<std::uint16_t> download(const cuda::DeviceBuffer& buffer, std::int64_t count) {
  SIGATTN_CU(cuda::driver().cuCtxSynchronize());
  std::vector<std::uint16_t> host(count);
  buffer.download(host.data(), host.size() * sizeof(std::uint16_t));
  return host;
}

Comparison compare(const KvProblem& p, const std::vector<std::uint16_t>& out,
                   const std::vector<double>& ref) {
  double max_abs = 0.0;
  for (const double r : ref) max_abs = std::max(max_abs, std::abs(r));
  ErrorAccumulator errors(max_abs, tolerance_for(p.dtype));
  for (std::int64_t e = 0; e < std::int64_t(ref.size()); ++e) {
    const std::int64_t row = e / p.head_dim;
    Element element;
    element.offset = e;
    element.dim = static_cast<int>(e % p.head_dim);
    element.head = static_cast<int>(row % p.heads_q);
    element.row = static_cast<int>(row / p.heads_q % p.seqlen_q);
    element.batch = static_cast<int>(row / p.heads_q / p.seqlen_q);
    errors.add(element, from_bits(p.dtype, out[e]), ref[e]);
  }
  return errors.result();
}

// The heuristic's tile of the call `dev` describes on this GPU, with `splits` splits.
gen::TileConfig default_tile(const Gpu& gpu, const KvDevice& dev, int splits) {
  gen::TileConfig tile = policy::default_tile(check_kvcache(dev.args), gpu.target).tile;
  tile.splits = splits;
  return tile;
}

class KvCacheGpu : public GpuTest, public testing::WithParamInterface<KvProblem> {};

// Each problem at the heuristic's split count and at forced ones from 1 to many: the output
// against the reference, and the cache after the call against the append.
TEST_P(KvCacheGpu, MatchesTheReferenceAtEverySplitCount) {
  const KvProblem& p = GetParam();
  const KvHost host = make_host(p, seed());
  const KvHost after = appended(p, host);
  const std::vector<double> ref = reference(p, after);
  for (const int splits : {-1, 1, 2, 5, 64}) {
    SCOPED_TRACE(fmt::format("problem {}, splits {}, seed {} (base {})", p.name,
                             splits < 0 ? std::string("heuristic") : std::to_string(splits), seed(),
                             base_seed()));
    KvDevice dev = make_device(p, host);
    if (splits < 0) {
      forward_with_kvcache(dev.args, nullptr);
    } else {
      forward_with_kvcache_tile(dev.args, nullptr, default_tile(gpu(), dev, splits));
    }
    const Comparison result = compare(p, download(dev.out, q_elements(p)), ref);
    EXPECT_TRUE(result.passed) << result.summary;
    EXPECT_EQ(download(dev.k_cache, cache_elements(p)), after.k_cache);
    EXPECT_EQ(download(dev.v_cache, cache_elements(p)), after.v_cache);
  }
}

INSTANTIATE_TEST_SUITE_P(Problems, KvCacheGpu, testing::ValuesIn(problems()),
                         [](const testing::TestParamInfo<KvProblem>& info) {
                           return info.param.name;
                         });

class KvCacheGpuSplits : public GpuTest {};

// Splitting only regroups fp32 sums: the output of any split count is the unsplit one up to the
// dtype's rounding of the result (one unit in the last place of the largest value).
TEST_F(KvCacheGpuSplits, SplitOutputsMatchTheUnsplitOne) {
  KvProblem p = decode("long_contiguous", 32, 8, {4096, 3000});
  p.capacity = 4096;
  const KvHost host = make_host(p, seed());
  const auto run = [&](int splits) {
    KvDevice dev = make_device(p, host);
    forward_with_kvcache_tile(dev.args, nullptr, default_tile(gpu(), dev, splits));
    return download(dev.out, q_elements(p));
  };
  const std::vector<std::uint16_t> unsplit = run(1);
  double max_abs = 0.0;
  for (const std::uint16_t bits : unsplit) {
    max_abs = std::max(max_abs, double{std::abs(from_bits(p.dtype, bits))});
  }
  const double ulp = max_abs * std::ldexp(1.0, -7);
  for (const int splits : {2, 3, 17, 64, 128}) {
    const std::vector<std::uint16_t> split = run(splits);
    double worst = 0.0;
    for (std::size_t e = 0; e < split.size(); ++e) {
      worst = std::max(
          worst, double{std::abs(from_bits(p.dtype, split[e]) - from_bits(p.dtype, unsplit[e]))});
    }
    EXPECT_LE(worst, ulp) << splits << " splits, seed " << seed();
  }
}

// Bad lengths and block table entries are refused before anything runs: the output and the cache
// keep their contents.
TEST_F(KvCacheGpuSplits, BadDeviceLengthsAreRefusedBeforeAnythingRuns) {
  KvProblem p = decode("paged_bad_lengths", 8, 2, {10, 20});
  p.block_size = 16;
  p.capacity = 64;
  p.seqlen_new = 2;
  const KvHost host = make_host(p, seed());
  const auto expect_refused = [&](KvHost bad, const std::string& message) {
    KvDevice dev = make_device(p, bad);
    try {
      forward_with_kvcache(dev.args, nullptr);
      ADD_FAILURE() << "accepted: " << message;
    } catch (const Error& error) {
      EXPECT_EQ(error.status(), Status::invalid_argument);
      EXPECT_NE(std::string(error.what()).find(message), std::string::npos) << error.what();
    }
    EXPECT_EQ(download(dev.k_cache, cache_elements(p)), bad.k_cache);
    for (const std::uint16_t bits : download(dev.out, q_elements(p))) ASSERT_EQ(bits, 0xFFFF);
  };
  KvHost too_long = host;
  too_long.cache_seqlens[1] = 63;
  expect_refused(too_long, "cache_seqlens[1] = 63 is out of range [0, 62]");
  KvHost bad_block = host;
  bad_block.block_table[p.max_blocks() + 1] = p.num_blocks();
  expect_refused(bad_block, fmt::format("block_table[1][1] = {}", p.num_blocks()));
}

}  // namespace
}  // namespace sigattn::test
