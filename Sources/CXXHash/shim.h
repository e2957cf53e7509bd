// CXXHash: libxxhash's XXH3 and XXH64, linked (never inlined) so that one implementation serves the process.
#include <xxhash.h>
#if defined(__x86_64__)
// The library's runtime-dispatched XXH3 entry points (AVX2 / AVX-512 where the CPU has them).
#include <xxh_x86dispatch.h>
#endif
