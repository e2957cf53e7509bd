// MagnitudeThreshold: TIES's top-k by magnitude, found by a two-pass radix select instead of sorting a copy.

/// Which elements of a task vector TIES keeps: the k of largest |τ|. Ties at the threshold are
/// broken by lower element index first, so the choice is deterministic and independent of chunking.
///
/// For non-negative floats the bit pattern orders like the value, so the k-th largest |τ| is found
/// with two 65,536-bin histograms (high then low 16 bits) over the data — O(n) time, O(1) memory.
public struct MagnitudeThreshold: Sendable {
    /// Bit pattern of the smallest kept |τ|; elements above it are kept.
    public let thresholdBits: UInt32
    /// How many elements equal to the threshold are kept, counted in index order.
    public let keptAtThreshold: Int
    /// Whether only some of the elements equal to the threshold are kept, so merging must count them.
    public let dropsSomeTies: Bool
    /// Keep all (density ≥ 1) or none (k = 0).
    public let keepAll: Bool
    public let keepNone: Bool

    public init(thresholdBits: UInt32, keptAtThreshold: Int, dropsSomeTies: Bool, keepAll: Bool, keepNone: Bool) {
        self.thresholdBits = thresholdBits
        self.keptAtThreshold = keptAtThreshold
        self.dropsSomeTies = dropsSomeTies
        self.keepAll = keepAll
        self.keepNone = keepNone
    }

    public static let keepEverything = MagnitudeThreshold(thresholdBits: 0, keptAtThreshold: 0, dropsSomeTies: false, keepAll: true, keepNone: false)
}

@inline(__always)
func magnitudeBits(_ value: Float) -> UInt32 { value.bitPattern & 0x7FFF_FFFF }

/// A 65,536-bin histogram that chunks fill independently and then add up (integer sums: order-free).
/// Bins are 32-bit so a worker's histograms stay in cache; a worker adds at most one chunk at a time.
struct Histogram16 {
    var counts = [UInt32](repeating: 0, count: 65536)

    mutating func add(_ other: Histogram16) {
        for i in 0..<65536 { counts[i] += other.counts[i] }
    }

    /// Walking bins from the top, the bin holding the `rank`-th largest element (1-based) and how
    /// many elements lie in higher bins.
    func binHolding(rank: Int) -> (bin: Int, above: Int) {
        var above = 0
        for bin in stride(from: 65535, through: 0, by: -1) {
            if above + Int(counts[bin]) >= rank { return (bin, above) }
            above += Int(counts[bin])
        }
        preconditionFailure("rank \(rank) exceeds the histogram's \(above) elements")
    }
}
