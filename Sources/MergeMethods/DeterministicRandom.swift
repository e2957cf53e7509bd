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

/// A 32-bit finaliser, Chris Wellons's "triple32": a bijection whose output bits each flip with
/// probability ~1/2 when any input bit does. (His two-multiply "lowbias32" left DARE masks correlated
/// at power-of-two distances, 0.001 at 64 elements against 0.0002 of noise; triple32 showed none.)
@inline(__always)
public func mix32(_ value: UInt32) -> UInt32 {
    var x = value
    x ^= x >> 17
    x &*= 0xED5A_D4BB
    x ^= x >> 11
    x &*= 0xAC4C_1B51
    x ^= x >> 15
    x &*= 0x3184_8BAB
    return x ^ (x >> 14)
}

/// The DARE keep/drop stream of one (tensor, fine-tune) pair. Element j's draw depends only on the
/// seed, the tensor's canonical name, the fine-tune's index and j — never on chunking or threads.
///
/// key = splitmix64(XXH3-64(name, seed) + t), k₀ and k₁ its low and high 32 bits; element j draws
/// h = mix32((j mod 2³²) ⊕ k₀ ⊕ ⌊j/2³²⌋·0x9E3779B9) ⊕ k₁ (32-bit arithmetic) and is kept iff
/// h < ⌈density·2³²⌉. A 32-bit mix per element, eight to a vector: the stream is most of DARE's
/// cost, and the 64-bit splitmix64 per two elements it replaced needed three 32-bit multiplies for
/// each of its two 64-bit ones on AVX2 (DARE-TIES spent 42 % of its CPU time there).
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
        guard threshold <= UInt64(UInt32.max) else {
            mask.update(repeating: 1, count: elements.count)
            return
        }
        let bound = UInt32(threshold), k1 = UInt32(truncatingIfNeeded: key >> 32)
        // 1.0f is 0x3F80_0000: the loop stores bit patterns, so that it vectorises.
        let bits = UnsafeMutableRawPointer(mask).assumingMemoryBound(to: UInt32.self)
        var start = elements.lowerBound
        while start < elements.upperBound {
            // Elements sharing ⌊j/2³²⌋ (every tensor below 2³² elements: all of them) share the salt.
            let high = start >> 32
            let end = min(elements.upperBound, (high + 1) << 32)
            let salt = UInt32(truncatingIfNeeded: key) ^ (UInt32(truncatingIfNeeded: high) &* 0x9E37_79B9)
            let out = bits + (start - elements.lowerBound), low = UInt32(truncatingIfNeeded: start)
            for i in 0..<(end - start) {
                let h = mix32((low &+ UInt32(truncatingIfNeeded: i)) ^ salt) ^ k1
                out[i] = h < bound ? 0x3F80_0000 : 0
            }
            start = end
        }
    }
}
