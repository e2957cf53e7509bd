// XXHash: the only file that touches libxxhash — streaming and one-shot XXH3-64/128, as hex digests.
import CXXHash

// On x86-64 every XXH3 call goes to the library's `_dispatch` entry points, which pick the AVX2 or
// AVX-512 kernel at run time: 4.5× the plain (SSE2) ones on data in cache (98 vs 21.5 GB/s here),
// which made hashing the largest CPU cost of a merge. Only that family is used: after a `_dispatch`
// call the plain functions ran 3.5× slower for the rest of the process (TOOLCHAIN.md).
#if arch(x86_64)
private let xxh3_64Update = XXH3_64bits_update_dispatch
private let xxh3_128Update = XXH3_128bits_update_dispatch
private let xxh3_64Seeded = XXH3_64bits_withSeed_dispatch
private let xxh3_128OneShot = XXH3_128bits_dispatch
#else
private let xxh3_64Update = XXH3_64bits_update
private let xxh3_128Update = XXH3_128bits_update
private let xxh3_64Seeded = XXH3_64bits_withSeed
private let xxh3_128OneShot = XXH3_128bits
#endif

/// A streaming XXH3 hasher producing a 64-bit or 128-bit digest.
/// The corresponding C functions are `XXH3_64bits_update` / `XXH3_128bits_update` (`_dispatch` on x86-64).
public final class XXH3Hasher: @unchecked Sendable {
    public enum Width: Sendable { case bits64, bits128 }
    private let state: OpaquePointer
    public let width: Width

    public init(_ width: Width) {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        self.state = state
        self.width = width
        reset()
    }

    deinit { XXH3_freeState(state) }

    public func reset() {
        switch width {
        case .bits64: XXH3_64bits_reset(state)
        case .bits128: XXH3_128bits_reset(state)
        }
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        switch width {
        case .bits64: _ = xxh3_64Update(state, base, bytes.count)
        case .bits128: _ = xxh3_128Update(state, base, bytes.count)
        }
    }

    /// The digest of everything fed so far, as lower-case hex (16 or 32 digits, most significant first).
    public func hexDigest() -> String {
        switch width {
        case .bits64: return hex64(XXH3_64bits_digest(state))
        case .bits128:
            let h = XXH3_128bits_digest(state)
            return hex64(h.high64) + hex64(h.low64)
        }
    }
}

/// XXH3-64 of `bytes` with `seed`. The corresponding C function is `XXH3_64bits_withSeed` (`_dispatch` on x86-64).
public func xxh3_64(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0) -> UInt64 {
    xxh3_64Seeded(bytes.baseAddress, bytes.count, seed)
}

/// XXH3-64 of a string's UTF-8 bytes with `seed`.
public func xxh3_64(_ string: String, seed: UInt64 = 0) -> UInt64 {
    var copy = string
    return copy.withUTF8 { xxh3_64(UnsafeRawBufferPointer($0), seed: seed) }
}

/// XXH3-128 of `bytes`, as hex. The corresponding C function is `XXH3_128bits` (`_dispatch` on x86-64).
public func xxh3_128Hex(_ bytes: UnsafeRawBufferPointer) -> String {
    let h = xxh3_128OneShot(bytes.baseAddress, bytes.count)
    return hex64(h.high64) + hex64(h.low64)
}

/// 16 lower-case hex digits.
public func hex64(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// XXH64 of `bytes` (seed 0): the activation cache's per-chunk check. The C function is `XXH64`.
public func xxh64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    XXH64(bytes.baseAddress, bytes.count, 0)
}
