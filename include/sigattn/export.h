/* SIGATTN_API marks what libsigattn.so exports. The library is built with hidden visibility, so
 * only declarations carrying this macro (the C ABI, the C++ API and sigattn::Error, whose type
 * information must be shared for exceptions to be caught across the library boundary) are
 * visible to users. Plain C, usable from C and C++. */
#ifndef SIGATTN_EXPORT_H
#define SIGATTN_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define SIGATTN_API __attribute__((visibility("default")))
#else
#define SIGATTN_API
#endif

#endif /* SIGATTN_EXPORT_H */
