// DeterministicRandom: counter-based randomness keyed by (seed, tensor, model, element), independent of threads.
import Checksum

/// SplitMix64's finaliser: a bijective 64-bit mix, so distinct counters give independent-looking outputs.
@inline(__always)
public func splitMix64(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// The DARE keep/drop stream of one (tensor, fine-tune) pair. Element j's draw depends only on the
/// seed, the tensor's canonical name, the fine-tune's index and j — never on chunking or threads.
///
/// key = XXH3-64(name, seed); kₜ = splitmix64(key + t); u_j = (splitmix64(kₜ + j) >> 11) · 2⁻⁵³;
/// element j is kept iff u_j < density. `tools/reference_merge.py` implements the same stream.
public struct DropoutStream: Sendable {
    public let key: UInt64

    public init(seed: UInt64, tensorName: String, modelIndex: Int) {
        key = splitMix64(xxh3_64(tensorName, seed: seed) &+ UInt64(modelIndex))
    }

    /// The integer form of `u < density` for u = bits·2⁻⁵³: bits < ⌈density·2⁵³⌉ (the scaling is exact),
    /// which spares an int-to-double conversion per element.
    public static func keepThreshold(density: Double) -> UInt64 {
        UInt64((min(max(density, 0), 1) * 0x1p53).rounded(.up))
    }

    @inline(__always)
    public func keeps(_ element: Int, threshold: UInt64) -> Bool {
        splitMix64(key &+ UInt64(element)) >> 11 < threshold
    }
}
