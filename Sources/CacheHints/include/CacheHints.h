// CacheHints: software prefetch, which Swift has no way to express.
#ifndef STREAMMERGE_CACHE_HINTS_H
#define STREAMMERGE_CACHE_HINTS_H
#include <stddef.h>

/// Asks the CPU to start loading the `bytes` bytes at `start` into its caches and returns at once.
/// Addresses that are not mapped are ignored, as prefetches never fault.
void cache_prefetch(const void *start, size_t bytes);

#endif
