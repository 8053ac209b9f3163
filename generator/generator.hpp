// The generator: (KernelSpec, Family, TileConfig) -> a self-contained NVRTC program. Plain C++
// with no CUDA headers, and deterministic: the same variant always gives the same source,
// options and content hash.
#pragma once

#include <string>
#include <vector>

#include "generator/kernel_spec.hpp"
#include "generator/template_store.hpp"

namespace sigattn::gen {

// Bump when the generated source or its options change meaning; part of every cache key.
inline constexpr int kGeneratorVersion = 1;

struct GeneratedKernel {
  Variant variant;
  std::string variant_name;          // canonical variant string
  std::string source;                // the program text given to NVRTC
  std::string name_expression;       // the kernel instantiation to ask NVRTC for
  std::vector<std::string> options;  // NVRTC options, without the architecture
  int threads = 0;                   // threads per CTA
  int smem_bytes = 0;                // dynamic shared memory per CTA
  std::string content_hash;          // hex hash of source, templates, options and versions
};

// Bytes of dynamic shared memory the variant's kernel needs.
int smem_bytes(const KernelSpec& spec, const TileConfig& tile);

// CTAs per row block along grid x: the sm80 backward kernels split head dims above 128 into
// slices; the sm90 kernels hold whole rows.
int grid_slices(const Variant& variant);

// Throws std::invalid_argument naming the structural constraint (generator/tile_policy.hpp) that
// the spec or tile violates.
GeneratedKernel generate(const Variant& variant);

// The include path of the template that holds the variant's kernel, e.g. "sigattn/fwd_sm90.cuh":
// one per direction and family.
std::string entry_template(const Variant& variant);

// Hex XXH3-128 over what NVRTC builds the variant's kernel from: the generated program, its
// options and name expression, and every template its entry template includes, all normalized
// (normalized_source) so that comments and formatting do not count. Tuning results are keyed by
// it: a template edit stales exactly the results of the kernels that include it. The generator
// version is not part of it, since any change of meaning shows in the generated program. Throws
// like generate() for a variant the generator refuses. `templates` replaces the embedded ones.
std::string kernel_source_hash(const Variant& variant);
std::string kernel_source_hash(const Variant& variant,
                               const std::vector<EmbeddedTemplate>& templates);

// The dQ conversion of the one-pass backward (a dkdv tile with atomic_dq): grad_q = scale * the
// fp32 workspace, in the dtype and layout of the backward `spec` (dkdv or dq). It depends on
// nothing else, has no tile (variant.tile keeps its defaults) and is named
// "dqconvert.DTYPE.dHEAD.LAYOUT". It runs kDqConvertThreads threads per CTA over a grid of
// (ceil(max_seqlen_q / kDqConvertRowsPerCta), heads_q, batch).
inline constexpr int kDqConvertRowsPerCta = 32;
inline constexpr int kDqConvertThreads = 128;
GeneratedKernel generate_dq_convert(const KernelSpec& spec);

// The two helpers of a decode `spec`, each with no tile and kCacheHelperThreads threads per CTA.
// The append of the new keys and values into the cache, "kvappend.DTYPE.dHEAD.LAYOUT", over a grid
// of (ceil(seqlen_new * heads_kv * head_dim / 8 / threads), batch): one thread per 16 bytes of a
// key and of its value. The sum of the split-KV partial outputs, "decodereduce.DTYPE.dHEAD" (the
// same for both cache layouts), one thread per 16 bytes of the output over a grid-stride loop.
inline constexpr int kCacheHelperThreads = 128;
GeneratedKernel generate_kv_append(const KernelSpec& spec);
GeneratedKernel generate_decode_reduce(const KernelSpec& spec);

}  // namespace sigattn::gen
