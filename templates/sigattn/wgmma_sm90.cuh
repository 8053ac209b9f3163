// wgmma (sm_90a) for the m64nNk16 shapes with fp32 accumulators, N a multiple of 16 up to 256:
// ss takes A and B from shared memory through descriptors, each K-contiguous or, when its
// transpose flag is set, M- or N-contiguous; rs takes A from registers (four 16-bit pairs per
// thread, the mma.sync A-fragment layout) and B transposed (N-contiguous).
// The operand lists are spelled out by the macro chains below, one chain link per 8 registers.
#pragma once

namespace sigattn {

template <int N>
struct Wgmma;

#define SIGATTN_WGMMA_P8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define SIGATTN_WGMMA_P16 \
  SIGATTN_WGMMA_P8        \
  ", "                    \
  "%8, %9, %10, %11, %12, %13, %14, %15"
#define SIGATTN_WGMMA_P24 \
  SIGATTN_WGMMA_P16       \
  ", "                    \
  "%16, %17, %18, %19, %20, %21, %22, %23"
#define SIGATTN_WGMMA_P32 \
  SIGATTN_WGMMA_P24       \
  ", "                    \
  "%24, %25, %26, %27, %28, %29, %30, %31"
#define SIGATTN_WGMMA_P40 \
  SIGATTN_WGMMA_P32       \
  ", "                    \
  "%32, %33, %34, %35, %36, %37, %38, %39"
#define SIGATTN_WGMMA_P48 \
  SIGATTN_WGMMA_P40       \
  ", "                    \
  "%40, %41, %42, %43, %44, %45, %46, %47"
#define SIGATTN_WGMMA_P56 \
  SIGATTN_WGMMA_P48       \
  ", "                    \
  "%48, %49, %50, %51, %52, %53, %54, %55"
#define SIGATTN_WGMMA_P64 \
  SIGATTN_WGMMA_P56       \
  ", "                    \
  "%56, %57, %58, %59, %60, %61, %62, %63"
#define SIGATTN_WGMMA_P72 \
  SIGATTN_WGMMA_P64       \
  ", "                    \
  "%64, %65, %66, %67, %68, %69, %70, %71"
#define SIGATTN_WGMMA_P80 \
  SIGATTN_WGMMA_P72       \
  ", "                    \
  "%72, %73, %74, %75, %76, %77, %78, %79"
#define SIGATTN_WGMMA_P88 \
  SIGATTN_WGMMA_P80       \
  ", "                    \
  "%80, %81, %82, %83, %84, %85, %86, %87"
#define SIGATTN_WGMMA_P96 \
  SIGATTN_WGMMA_P88       \
  ", "                    \
  "%88, %89, %90, %91, %92, %93, %94, %95"
#define SIGATTN_WGMMA_P104 \
  SIGATTN_WGMMA_P96        \
  ", "                     \
  "%96, %97, %98, %99, %100, %101, %102, %103"
#define SIGATTN_WGMMA_P112 \
  SIGATTN_WGMMA_P104       \
  ", "                     \
  "%104, %105, %106, %107, %108, %109, %110, %111"
#define SIGATTN_WGMMA_P120 \
  SIGATTN_WGMMA_P112       \
  ", "                     \
  "%112, %113, %114, %115, %116, %117, %118, %119"
#define SIGATTN_WGMMA_P128 \
  SIGATTN_WGMMA_P120       \
  ", "                     \
  "%120, %121, %122, %123, %124, %125, %126, %127"
#define SIGATTN_WGMMA_C8 \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define SIGATTN_WGMMA_C16                                                                       \
  SIGATTN_WGMMA_C8, "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), \
      "+f"(d[14]), "+f"(d[15])
#define SIGATTN_WGMMA_C24                                                                          \
  SIGATTN_WGMMA_C16, "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), \
      "+f"(d[22]), "+f"(d[23])
#define SIGATTN_WGMMA_C32                                                                          \
  SIGATTN_WGMMA_C24, "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), \
      "+f"(d[30]), "+f"(d[31])
#define SIGATTN_WGMMA_C40                                                                          \
  SIGATTN_WGMMA_C32, "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), \
      "+f"(d[38]), "+f"(d[39])
#define SIGATTN_WGMMA_C48                                                                          \
  SIGATTN_WGMMA_C40, "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), \
      "+f"(d[46]), "+f"(d[47])
#define SIGATTN_WGMMA_C56                                                                          \
  SIGATTN_WGMMA_C48, "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), \
      "+f"(d[54]), "+f"(d[55])
#define SIGATTN_WGMMA_C64                                                                          \
  SIGATTN_WGMMA_C56, "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), \
      "+f"(d[62]), "+f"(d[63])
#define SIGATTN_WGMMA_C72                                                                          \
  SIGATTN_WGMMA_C64, "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), \
      "+f"(d[70]), "+f"(d[71])
#define SIGATTN_WGMMA_C80                                                                          \
  SIGATTN_WGMMA_C72, "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), \
      "+f"(d[78]), "+f"(d[79])
#define SIGATTN_WGMMA_C88                                                                          \
  SIGATTN_WGMMA_C80, "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), \
      "+f"(d[86]), "+f"(d[87])
#define SIGATTN_WGMMA_C96                                                                          \
  SIGATTN_WGMMA_C88, "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), \
      "+f"(d[94]), "+f"(d[95])
#define SIGATTN_WGMMA_C104                                                             \
  SIGATTN_WGMMA_C96, "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), \
      "+f"(d[101]), "+f"(d[102]), "+f"(d[103])
#define SIGATTN_WGMMA_C112                                                                  \
  SIGATTN_WGMMA_C104, "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), \
      "+f"(d[109]), "+f"(d[110]), "+f"(d[111])
#define SIGATTN_WGMMA_C120                                                                  \
  SIGATTN_WGMMA_C112, "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), \
      "+f"(d[117]), "+f"(d[118]), "+f"(d[119])
#define SIGATTN_WGMMA_C128                                                                  \
  SIGATTN_WGMMA_C120, "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), \
      "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// The accumulators are operands 0 .. N/2-1; O0.. name the operands that follow them. The
// accumulator constraint list comes last, as the variadic part, since it holds commas.
#define SIGATTN_WGMMA_SS(N, TYPE, P, O0, O1, O2, O3, O4, ...)                                      \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " O2 ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N \
               "k16.f32." TYPE "." TYPE " {" P "}, " O0 ", " O1 ", p, 1, 1, " O3 ", " O4 ";\n}\n"  \
               : __VA_ARGS__                                                                       \
               : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(kTransA), "n"(kTransB))
#define SIGATTN_WGMMA_RS(N, TYPE, P, O0, O1, O2, O3, O4, O5, ...)                                  \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " O5 ", 0;\nwgmma.mma_async.sync.aligned.m64n" #N \
               "k16.f32." TYPE "." TYPE " {" P "}, {" O0 ", " O1 ", " O2 ", " O3 "}, " O4          \
               ", p, 1, 1, 1;\n}\n"                                                                \
               : __VA_ARGS__                                                                       \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate))

#define SIGATTN_DEFINE_WGMMA(N, P, O0, O1, O2, O3, O4, O5, ...)                             \
  template <>                                                                               \
  struct Wgmma<N> {                                                                         \
    template <bool kBf16, int kTransA = 0, int kTransB = 0>                                 \
    static __device__ __forceinline__ void ss(float (&d)[N / 2], unsigned long long desc_a, \
                                              unsigned long long desc_b, int accumulate) {  \
      if constexpr (kBf16) {                                                                \
        SIGATTN_WGMMA_SS(N, "bf16", P, O0, O1, O2, O3, O4, __VA_ARGS__);                    \
      } else {                                                                              \
        SIGATTN_WGMMA_SS(N, "f16", P, O0, O1, O2, O3, O4, __VA_ARGS__);                     \
      }                                                                                     \
    }                                                                                       \
    template <bool kBf16>                                                                   \
    static __device__ __forceinline__ void rs(float (&d)[N / 2], const unsigned (&a)[4],    \
                                              unsigned long long desc_b, int accumulate) {  \
      if constexpr (kBf16) {                                                                \
        SIGATTN_WGMMA_RS(N, "bf16", P, O0, O1, O2, O3, O4, O5, __VA_ARGS__);                \
      } else {                                                                              \
        SIGATTN_WGMMA_RS(N, "f16", P, O0, O1, O2, O3, O4, O5, __VA_ARGS__);                 \
      }                                                                                     \
    }                                                                                       \
  };

SIGATTN_DEFINE_WGMMA(16, SIGATTN_WGMMA_P8, "%8", "%9", "%10", "%11", "%12", "%13", SIGATTN_WGMMA_C8)
SIGATTN_DEFINE_WGMMA(32, SIGATTN_WGMMA_P16, "%16", "%17", "%18", "%19", "%20", "%21",
                     SIGATTN_WGMMA_C16)
SIGATTN_DEFINE_WGMMA(48, SIGATTN_WGMMA_P24, "%24", "%25", "%26", "%27", "%28", "%29",
                     SIGATTN_WGMMA_C24)
SIGATTN_DEFINE_WGMMA(64, SIGATTN_WGMMA_P32, "%32", "%33", "%34", "%35", "%36", "%37",
                     SIGATTN_WGMMA_C32)
SIGATTN_DEFINE_WGMMA(80, SIGATTN_WGMMA_P40, "%40", "%41", "%42", "%43", "%44", "%45",
                     SIGATTN_WGMMA_C40)
SIGATTN_DEFINE_WGMMA(96, SIGATTN_WGMMA_P48, "%48", "%49", "%50", "%51", "%52", "%53",
                     SIGATTN_WGMMA_C48)
SIGATTN_DEFINE_WGMMA(112, SIGATTN_WGMMA_P56, "%56", "%57", "%58", "%59", "%60", "%61",
                     SIGATTN_WGMMA_C56)
SIGATTN_DEFINE_WGMMA(128, SIGATTN_WGMMA_P64, "%64", "%65", "%66", "%67", "%68", "%69",
                     SIGATTN_WGMMA_C64)
SIGATTN_DEFINE_WGMMA(144, SIGATTN_WGMMA_P72, "%72", "%73", "%74", "%75", "%76", "%77",
                     SIGATTN_WGMMA_C72)
SIGATTN_DEFINE_WGMMA(160, SIGATTN_WGMMA_P80, "%80", "%81", "%82", "%83", "%84", "%85",
                     SIGATTN_WGMMA_C80)
SIGATTN_DEFINE_WGMMA(176, SIGATTN_WGMMA_P88, "%88", "%89", "%90", "%91", "%92", "%93",
                     SIGATTN_WGMMA_C88)
SIGATTN_DEFINE_WGMMA(192, SIGATTN_WGMMA_P96, "%96", "%97", "%98", "%99", "%100", "%101",
                     SIGATTN_WGMMA_C96)
SIGATTN_DEFINE_WGMMA(208, SIGATTN_WGMMA_P104, "%104", "%105", "%106", "%107", "%108", "%109",
                     SIGATTN_WGMMA_C104)
SIGATTN_DEFINE_WGMMA(224, SIGATTN_WGMMA_P112, "%112", "%113", "%114", "%115", "%116", "%117",
                     SIGATTN_WGMMA_C112)
SIGATTN_DEFINE_WGMMA(240, SIGATTN_WGMMA_P120, "%120", "%121", "%122", "%123", "%124", "%125",
                     SIGATTN_WGMMA_C120)
SIGATTN_DEFINE_WGMMA(256, SIGATTN_WGMMA_P128, "%128", "%129", "%130", "%131", "%132", "%133",
                     SIGATTN_WGMMA_C128)

#undef SIGATTN_DEFINE_WGMMA
#undef SIGATTN_WGMMA_RS
#undef SIGATTN_WGMMA_SS

}  // namespace sigattn
