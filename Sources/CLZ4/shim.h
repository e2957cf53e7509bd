// CLZ4: liblz4's block API.
#include <lz4.h>
