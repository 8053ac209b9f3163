// Kernel source hashes: normalization drops comments and formatting and nothing else, the include
// graph of each entry template, and a kernel's hash follows exactly the templates it includes.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "generator/generator.hpp"
#include "generator/template_store.hpp"

namespace sigattn::gen {
namespace {

Variant variant_of(const std::string& text) {
  ParsedVariant parsed = parse_variant(text);
  return Variant{parsed.spec, parsed.tile.value()};
}

const Variant kFwdSm80 = variant_of("fwd.bf16.d128.dense.causal.nosmod.fast.x128/sm80.m128n64w4s2");
const Variant kFwdSm90 =
    variant_of("fwd.bf16.d128.dense.causal.nosmod.fast.x128/sm90.m128n128w12s2");

bool contains(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The embedded templates with one replaced; the strings live as long as the object.
class EditedTemplates {
 public:
  EditedTemplates(const std::string& name, std::string source) : source_(std::move(source)) {
    for (const EmbeddedTemplate& t : embedded_templates()) {
      templates_.push_back(name == t.name ? EmbeddedTemplate{t.name, source_.c_str()} : t);
    }
  }
  // The original source of `name` with `text` appended.
  static EditedTemplates appended(const std::string& name, const std::string& text) {
    for (const EmbeddedTemplate& t : embedded_templates()) {
      if (name == t.name) return EditedTemplates(name, t.source + text);
    }
    throw std::invalid_argument(name);
  }
  const std::vector<EmbeddedTemplate>& templates() const { return templates_; }

 private:
  std::string source_;
  std::vector<EmbeddedTemplate> templates_;
};

TEST(NormalizedSource, DropsCommentsAndFormattingOnly) {
  const std::string source =
      "// a header comment\n"
      "#include \"sigattn/a.h\"  // why\n"
      "#define  TWICE(x) ((x) +  \\\n    (x))\n"
      "template <int N>\n"
      "__device__ int f(int a, int b) {  /* note */\n"
      "  return a+b - -N;\n"
      "}\n";
  const std::string reformatted =
      "#include \"sigattn/a.h\"\n"
      "   #define TWICE(x) ((x) + (x))\n"
      "/* moved\n   comment */ template<int N> __device__ int f(int a,\n"
      "                                                  int b)\n"
      "{ return a + b - -N; }\n";
  EXPECT_EQ(normalized_source(source), normalized_source(reformatted));
  EXPECT_EQ(normalized_source(source),
            "#include \"sigattn/a.h\"\n#define TWICE(x) ((x) + (x))\ntemplate<int N>__device__ "
            "int f(int a,int b){return a+b- -N;}");
}

TEST(NormalizedSource, KeepsWhatChangesTheProgram) {
  const std::string base = "int f(int a) { return a - -1; }";
  for (const char* changed :
       {"int f(int a) { return a--1; }", "int f(int a) { return a - 1; }",
        "int g(int a) { return a - -1; }", "intf(int a) { return a - -1; }"}) {
    EXPECT_NE(normalized_source(base), normalized_source(changed)) << changed;
  }
  // Literals keep their spaces and comment-like text; a directive keeps its own line.
  EXPECT_NE(normalized_source("const char* s = \"a  b\";"),
            normalized_source("const char* s = \"a b\";"));
  EXPECT_EQ(normalized_source("const char* s = \"x // y /* z */\"; // gone"),
            "const char*s=\"x // y /* z */\";");
  EXPECT_EQ(normalized_source("char c = '\\''; int n = 1'000;"), "char c='\\'';int n=1'000;");
  EXPECT_NE(normalized_source("#define A 1\nint b;"), normalized_source("#define A 1 int b;"));
  EXPECT_NE(normalized_source("#define F (x)"), normalized_source("#define F(x)"));
}

TEST(IncludedTemplates, FollowIncludesTransitively) {
  const std::vector<std::string> sm80 = included_templates("sigattn/fwd_sm80.cuh");
  EXPECT_TRUE(std::is_sorted(sm80.begin(), sm80.end()));
  EXPECT_TRUE(contains(sm80, "sigattn/fwd_sm80.cuh"));
  EXPECT_TRUE(contains(sm80, "sigattn/ptx_sm80.cuh"));
  EXPECT_TRUE(contains(sm80, "sigattn/fwd_params.h"));
  EXPECT_FALSE(contains(sm80, "sigattn/wgmma_sm90.cuh"));
  // fwd_sm90 reaches the tile scheduler only through row_blocks_sm90.
  EXPECT_TRUE(contains(included_templates("sigattn/fwd_sm90.cuh"), "sigattn/tile_scheduler.cuh"));
  EXPECT_FALSE(contains(included_templates("sigattn/bwd_dq_convert.cuh"), "sigattn/sigmoid.cuh"));
  EXPECT_THROW(included_templates("sigattn/none.cuh"), std::invalid_argument);
  const EditedTemplates broken =
      EditedTemplates::appended("sigattn/sigmoid.cuh", "\n#include \"sigattn/missing.cuh\"\n");
  try {
    included_templates("sigattn/fwd_sm80.cuh", broken.templates());
    ADD_FAILURE() << "an include of a missing template was accepted";
  } catch (const std::invalid_argument& error) {
    EXPECT_NE(std::string(error.what()).find("sigattn/sigmoid.cuh includes 'sigattn/missing.cuh'"),
              std::string::npos)
        << error.what();
  }
}

TEST(EntryTemplate, OnePerDirectionAndFamily) {
  EXPECT_EQ(entry_template(kFwdSm80), "sigattn/fwd_sm80.cuh");
  EXPECT_EQ(entry_template(kFwdSm90), "sigattn/fwd_sm90.cuh");
  EXPECT_EQ(
      entry_template(variant_of("dq.bf16.d128.dense.nomask.nosmod.fast.x128/sm80.m64n64w4s2")),
      "sigattn/bwd_dq_sm80.cuh");
  EXPECT_EQ(
      entry_template(variant_of("dkdv.bf16.d128.dense.nomask.nosmod.fast.x128/sm90.m64n128w12s2")),
      "sigattn/bwd_dkdv_sm90.cuh");
  for (const Variant& variant : {kFwdSm80, kFwdSm90}) {
    EXPECT_NE(generate(variant).source.find("#include \"" + entry_template(variant) + "\""),
              std::string::npos);
  }
}

TEST(KernelSourceHash, FollowsTheVariantAndIsStable) {
  EXPECT_EQ(kernel_source_hash(kFwdSm80).size(), 32u);
  EXPECT_EQ(kernel_source_hash(kFwdSm80), kernel_source_hash(kFwdSm80));
  EXPECT_EQ(kernel_source_hash(kFwdSm80), kernel_source_hash(kFwdSm80, embedded_templates()));
  EXPECT_NE(kernel_source_hash(kFwdSm80), kernel_source_hash(kFwdSm90));
  Variant other_tile = kFwdSm80;
  other_tile.tile.stages = 3;
  EXPECT_NE(kernel_source_hash(kFwdSm80), kernel_source_hash(other_tile));
  Variant refused = kFwdSm80;
  refused.tile.block_m = 48;
  EXPECT_THROW(kernel_source_hash(refused), std::invalid_argument);
}

TEST(KernelSourceHash, ChangesWithAnIncludedTemplateOnly) {
  const std::string sm80 = kernel_source_hash(kFwdSm80);
  const std::string sm90 = kernel_source_hash(kFwdSm90);
  // row_blocks_sm90 is included by the Hopper forward, not by the sm80 one.
  ASSERT_FALSE(contains(included_templates("sigattn/fwd_sm80.cuh"), "sigattn/row_blocks_sm90.cuh"));
  const EditedTemplates edited = EditedTemplates::appended(
      "sigattn/row_blocks_sm90.cuh", "\nnamespace sigattn { __device__ int added; }\n");
  EXPECT_NE(kernel_source_hash(kFwdSm90, edited.templates()), sm90);
  EXPECT_EQ(kernel_source_hash(kFwdSm80, edited.templates()), sm80);
  // sequence.cuh, two levels down from both entries, reaches both.
  const EditedTemplates deep = EditedTemplates::appended(
      "sigattn/fwd_params.h", "\nnamespace sigattn { __device__ int added; }\n");
  EXPECT_NE(kernel_source_hash(kFwdSm80, deep.templates()), sm80);
  EXPECT_NE(kernel_source_hash(kFwdSm90, deep.templates()), sm90);
  // Comments and formatting count for neither.
  const EditedTemplates cosmetic = EditedTemplates::appended(
      "sigattn/row_blocks_sm90.cuh", "\n// a comment added in a clean-up\n\n   \n");
  EXPECT_EQ(kernel_source_hash(kFwdSm90, cosmetic.templates()), sm90);
  EXPECT_NE(template_hash(), "") << "the all-templates hash still keys compiled kernels";
}

}  // namespace
}  // namespace sigattn::gen
