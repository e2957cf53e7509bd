// CacheHints: software prefetch, one hint per 64-byte cache line.
#include "CacheHints.h"

void cache_prefetch(const void *start, size_t bytes) {
    const char *p = start;
    for (size_t offset = 0; offset < bytes; offset += 64) {
        __builtin_prefetch(p + offset, 0, 3);
    }
}
