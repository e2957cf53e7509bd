// CXXHash: libxxhash's XXH3 and XXH64, linked (never inlined) so that one implementation serves the process.
#include <xxhash.h>
