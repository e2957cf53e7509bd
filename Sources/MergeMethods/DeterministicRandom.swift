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
/// key = XXH3-64(name, seed); kₜ = splitmix64(key + t); r = splitmix64(kₜ + ⌊j/2⌋); element j draws
/// the low 32 bits of r when j is even and the high 32 bits when odd, and is kept iff that draw is
/// below ⌈density·2³²⌉. One 64-bit mix serves two elements: the mix is most of DARE's cost.
/// `tools/reference_merge.py` implements the same stream.
public struct DropoutStream: Sendable {
    public let key: UInt64

    public init(seed: UInt64, tensorName: String, modelIndex: Int) {
        key = splitMix64(xxh3_64(tensorName, seed: seed) &+ UInt64(modelIndex))
    }

    /// The draw bound for `density`: ⌈density·2³²⌉, as a UInt64 so that density 1 keeps every draw.
    public static func keepThreshold(density: Double) -> UInt64 {
        UInt64((min(max(density, 0), 1) * 0x1p32).rounded(.up))
    }

    /// Writes 1 for kept and 0 for dropped elements `elements` into `mask`.
    public func fillMask(_ mask: UnsafeMutablePointer<Float>, elements: Range<Int>, threshold: UInt64) {
        var j = elements.lowerBound
        var out = mask
        if j & 1 == 1, j < elements.upperBound {
            out.pointee = splitMix64(key &+ UInt64(j >> 1)) >> 32 < threshold ? 1 : 0
            j += 1
            out += 1
        }
        // Each draw fills a pair of floats with one 64-bit store (1.0f is 0x3F80_0000): contiguous
        // stores of independent counters, so the loop vectorises.
        let pairs = (elements.upperBound - j) / 2, first = UInt64(j >> 1), key = key
        let one: UInt64 = 0x3F80_0000
        let raw = UnsafeMutableRawPointer(out)
        for p in 0..<pairs {
            let r = splitMix64(key &+ first &+ UInt64(p))
            let low = r & 0xFFFF_FFFF < threshold ? one : 0
            let high = r >> 32 < threshold ? one << 32 : 0
            raw.storeBytes(of: low | high, toByteOffset: 8 * p, as: UInt64.self)
        }
        j += 2 * pairs
        out += 2 * pairs
        if j < elements.upperBound {
            out.pointee = splitMix64(key &+ UInt64(j >> 1)) & 0xFFFF_FFFF < threshold ? 1 : 0
        }
    }
}
