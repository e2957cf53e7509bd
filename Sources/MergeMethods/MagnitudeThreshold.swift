// MagnitudeThreshold: TIES's top-k by magnitude, found by radix select over histograms instead of sorting a copy.

/// Which elements of a task vector TIES keeps: the k of largest |τ|. Ties at the threshold are
/// broken by lower element index first, so the choice is deterministic and independent of chunking.
///
/// For non-negative floats the bit pattern orders like the value, so the k-th largest |τ| is found
/// from 65,536-bin histograms of the high and then the low 16 bits — O(n) time, O(1) memory.
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
    public static let keepNothing = MagnitudeThreshold(thresholdBits: 0, keptAtThreshold: 0, dropsSomeTies: false, keepAll: false, keepNone: true)

    /// The threshold keeping `rank` elements when `above` lie above the value with bits `bits`, of
    /// which `equal` elements exist.
    init(bits: UInt32, rank: Int, above: Int, equal: Int) {
        let kept = rank - above
        self.init(thresholdBits: bits, keptAtThreshold: kept, dropsSomeTies: kept < equal, keepAll: false, keepNone: false)
    }
}

@inline(__always)
func magnitudeBits(_ value: Float) -> UInt32 { value.bitPattern & 0x7FFF_FFFF }

/// 1 when `a == b`, else 0, for |τ| bit patterns (both below 2³¹): (a ^ b) − 1 has its top bit set
/// exactly when a == b. In integer arithmetic, so that loops summing it vectorise: written as
/// `a == b ? 1 : 0` the compiler kept such loops scalar and branchy (11× slower).
@inline(__always)
func isEqual(_ a: UInt32, _ b: UInt32) -> UInt32 { ((a ^ b) &- 1) >> 31 }

/// `count` histograms of `bins` 32-bit bins, one per worker and fine-tune, filled independently and
/// then added up (integer sums: order-free). Both passes of the select use them.
struct Histograms {
    let bins: Int
    let counts: UnsafeMutablePointer<UInt32>

    init(count: Int, bins: Int) {
        self.bins = bins
        counts = .allocate(capacity: count * bins)
        counts.initialize(repeating: 0, count: count * bins)
    }

    func deallocate() { counts.deallocate() }

    func histogram(_ index: Int) -> UnsafeMutablePointer<UInt32> { counts + index * bins }

    /// Adds histogram `index` into histogram `target`.
    func accumulate(_ index: Int, into target: Int) {
        let from = histogram(index), to = histogram(target)
        for i in 0..<bins { to[i] &+= from[i] }
    }
}

/// The first pass of the select: per high-16-bit bin of |τ|, how many elements have all low bits zero
/// ("exact": their value is the bin's lowest) and how many do not. The exact ones are all tied below
/// the others of their bin, so when the k-th largest falls among them the threshold is known without
/// a second pass. Task vectors of bf16 checkpoints are nearly all exact (a difference of two bf16
/// values with the same exponent fits in bf16), so TIES on them reads its inputs twice, not three times.
/// Bin 2h counts the exact, 2h + 1 the inexact elements of high bits h.
extension Histograms {
    static let highBitBins = 2 * 65536

    /// The first pass's bin numbers of |θ − θ₀| for `n` elements, in a loop that vectorises.
    @inline(__always)
    static func highBitKeys(theta: UnsafePointer<Float>, base: UnsafePointer<Float>, n: Int, into keys: UnsafeMutablePointer<UInt32>) {
        for j in 0..<n {
            let bits = magnitudeBits(theta[j] - base[j])
            // 2·(bits >> 16), plus 1 when any low bit is set.
            keys[j] = (bits >> 15) & 0xFFFF_FFFE | (bits & 0xFFFF == 0 ? 0 : 1)
        }
    }

    /// Counts `n` keys per histogram: histogram `indices[i]` takes keys `i·stride ..< i·stride + n`.
    /// Up to three histograms are filled in one loop, element by element, so consecutive increments go
    /// to different tables: an increment waits for the previous one only when it hits the same bin of
    /// the same table (1.6× faster than one table at a time on a bf16 family's spiky histograms).
    @inline(__always)
    func add(_ indices: [Int], keys: UnsafePointer<UInt32>, stride: Int, n: Int) {
        var i = 0
        while i < indices.count {
            let a = histogram(indices[i]), ka = keys + i * stride
            switch indices.count - i {
            case 1:
                for j in 0..<n { a[Int(ka[j])] &+= 1 }
                i += 1
            case 2:
                let b = histogram(indices[i + 1]), kb = ka + stride
                for j in 0..<n {
                    a[Int(ka[j])] &+= 1
                    b[Int(kb[j])] &+= 1
                }
                i += 2
            default:
                let b = histogram(indices[i + 1]), kb = ka + stride
                let c = histogram(indices[i + 2]), kc = kb + stride
                for j in 0..<n {
                    a[Int(ka[j])] &+= 1
                    b[Int(kb[j])] &+= 1
                    c[Int(kc[j])] &+= 1
                }
                i += 3
            }
        }
    }

    /// For first-pass histogram `index` holding a whole tensor, the threshold keeping the `rank`
    /// largest, or — when the rank falls among a bin's inexact elements — that bin and how many
    /// elements lie above it.
    func selectByHighBits(_ index: Int, rank: Int) -> (threshold: MagnitudeThreshold?, bin: Int, above: Int) {
        let h = histogram(index)
        var above = 0
        for bin in stride(from: 65535, through: 0, by: -1) {
            let exact = Int(h[2 * bin]), inexact = Int(h[2 * bin + 1])
            if above + exact + inexact >= rank {
                guard rank - above > inexact else { return (nil, bin, above) }
                return (MagnitudeThreshold(bits: UInt32(bin) << 16, rank: rank, above: above + inexact, equal: exact), bin, above)
            }
            above += exact + inexact
        }
        preconditionFailure("rank \(rank) exceeds the histogram's \(above) elements")
    }
}

/// The second pass, for the task vectors whose rank fell among inexact elements: 65,536 bins of the
/// low 16 bits of the elements in the selected high bin.
extension Histograms {
    static let lowBitBins = 65536

    /// Counts the low bits of |θ − θ₀| for the `n` elements whose high bits are `bin`.
    @inline(__always)
    func addLowBits(_ index: Int, bin: UInt32, theta: UnsafePointer<Float>, base: UnsafePointer<Float>, n: Int) {
        let h = histogram(index)
        for j in 0..<n {
            let bits = magnitudeBits(theta[j] - base[j])
            if bits >> 16 == bin { h[Int(bits & 0xFFFF)] &+= 1 }
        }
    }

    /// For second-pass histogram `index`, the threshold keeping `rank` elements when `above` lie above
    /// high bin `bin`.
    func selectByLowBits(_ index: Int, bin: Int, rank: Int, above: Int) -> MagnitudeThreshold {
        let h = histogram(index)
        var aboveLow = above
        for low in stride(from: 65535, through: 0, by: -1) {
            if aboveLow + Int(h[low]) >= rank {
                return MagnitudeThreshold(bits: UInt32(bin) << 16 | UInt32(low), rank: rank, above: aboveLow, equal: Int(h[low]))
            }
            aboveLow += Int(h[low])
        }
        preconditionFailure("rank \(rank) exceeds bin \(bin)'s \(aboveLow - above) elements")
    }
}
