// MagnitudeBands: TIES's thresholds from vector compares inside bands a sample predicts, instead of a histogram increment per element.

/// Per fine-tune, the band of |τ| bit patterns a sample says holds TIES's threshold, and the exact
/// counts that find the threshold in it.
///
/// Filling a 131,072-bin histogram took a scattered increment per element and fine-tune: a fifth of
/// a TIES merge, whose repeated bins (bf16 task vectors take few distinct magnitudes) chain each
/// increment to the last. Instead a sample predicts a band [lo, hi] holding the k-th largest |τ| with
/// overwhelming probability, and the first pass counts, in branch-free loops that vectorise, the
/// elements below and above the band and those equal to each of the band's few frequent ("heavy")
/// values. The band's other ("light") values are kept, rare by construction. Counts and light values
/// give the exact threshold; when a band missed, the histogram select runs instead.
final class MagnitudeBands: @unchecked Sendable {
    static let maximumHeavyValues = 4

    struct Band {
        let lo: UInt32
        let hi: UInt32
        /// `heavyCount` values in lo...hi counted instead of kept; unused lanes repeat `hi`, and
        /// their counts are ignored.
        let heavy: SIMD4<UInt32>
        let heavyCount: Int

        init(lo: UInt32, hi: UInt32, heavy: [UInt32]) {
            precondition(heavy.count <= MagnitudeBands.maximumHeavyValues)
            self.lo = lo
            self.hi = hi
            var lanes = SIMD4<UInt32>(repeating: hi)
            for (lane, value) in heavy.enumerated() { lanes[lane] = value }
            self.heavy = lanes
            heavyCount = heavy.count
        }

        func isHeavy(_ m: UInt32) -> Bool { (0..<heavyCount).contains { heavy[$0] == m } }
    }

    /// Per fine-tune; nil where no threshold is selected.
    let bands: [Band?]
    let modelCount: Int
    /// Per chunk and fine-tune: above the band, then equal to each heavy value. Per chunk,
    /// not per worker, so that a heavy threshold's ties are known chunk by chunk (and each chunk is
    /// counted by one worker).
    private let counts: UnsafeMutablePointer<Int>
    private let chunkCount: Int
    private static let slots = 1 + maximumHeavyValues
    /// Per worker and fine-tune, the light values met.
    private let light: [[GrowingValues]]
    /// Most light values kept per worker and fine-tune; beyond, the band is given up.
    private let lightLimit: Int

    /// The light values allowed per worker and fine-tune in a tensor of `elementCount`: twice the
    /// most a sample accepted by `predict` suggests, so that only a misleading sample reaches it.
    static func lightLimit(elementCount: Int) -> Int { max(4096, elementCount / 256) }

    /// Most bytes the bands hold for a tensor of `chunkCount` chunks of `chunkSize` and `elementCount`
    /// elements: the sample (a chunk's worth per fine-tune) and the prediction tables, the light values
    /// (buffers that double, up to twice their limit), the per-chunk counts and the ties per chunk.
    static func byteCount(modelCount: Int, workers: Int, elementCount: Int, chunkSize: Int) -> Int {
        let chunks = (elementCount + chunkSize - 1) / chunkSize
        return modelCount * chunkSize * 4 + workers * Histograms.highBitBins * 4
            + workers * modelCount * 2 * 4 * lightLimit(elementCount: elementCount)
            + chunks * modelCount * (slots + 1) * 8
    }

    init(bands: [Band?], chunkCount: Int, workers: Int, lightLimit: Int) {
        self.bands = bands
        modelCount = bands.count
        self.chunkCount = chunkCount
        counts = .allocate(capacity: chunkCount * bands.count * Self.slots)
        counts.initialize(repeating: 0, count: chunkCount * bands.count * Self.slots)
        light = (0..<workers).map { _ in bands.map { _ in GrowingValues() } }
        self.lightLimit = lightLimit
    }

    deinit { counts.deallocate() }

    private func count(chunk: Int, model: Int) -> UnsafeMutablePointer<Int> {
        counts + (chunk * modelCount + model) * Self.slots
    }

    /// Elements counted at a time: a piece with light values is scanned again for them, so pieces are
    /// short enough that the scan stays rare work, long enough that their totals cost little.
    static let pieceLength = 512

    /// Counts fine-tune `model`'s |θ − θ₀| for `n` elements of chunk `chunk` on worker `worker`.
    @inline(__always)
    func count<Theta: FineTuneBlock>(worker: Int, chunk: Int, model: Int, theta: Theta, base: UnsafePointer<Float>, n: Int) {
        guard let band = bands[model] else { return }
        let counts = count(chunk: chunk, model: model)
        for start in Swift.stride(from: 0, to: n, by: Self.pieceLength) {
            let length = min(Self.pieceLength, n - start)
            let lights = count(band, theta: theta, base: base, range: start..<start + length, into: counts)
            guard lights > 0 else { continue }
            let values = light[worker][model]
            guard values.count <= lightLimit else { continue }
            for j in start..<start + length {
                let m = magnitudeBits(theta[j] - base[j])
                if m >= band.lo && m <= band.hi && !band.isHeavy(m) { values.append(m) }
            }
        }
    }

    /// Adds the counts of elements `range` to `counts` and returns how many are light (in the band, not heavy).
    @inline(__always)
    private func count<Theta: FineTuneBlock>(_ band: Band, theta: Theta, base: UnsafePointer<Float>, range: Range<Int>,
                                             into counts: UnsafeMutablePointer<Int>) -> Int {
        // Bands of at most two heavy values (most) take a loop with two compares fewer.
        let tally = band.heavyCount <= 2
            ? Self.tally(band, theta: theta, base: base, range: range, heavyLanes: 2)
            : Self.tally(band, theta: theta, base: base, range: range, heavyLanes: 4)
        counts[0] += tally.above
        var heavy = 0
        for slot in 0..<band.heavyCount {
            counts[1 + slot] += tally.equal[slot]
            heavy += tally.equal[slot]
        }
        return range.count - tally.below - tally.above - heavy
    }

    /// Counts of elements `range`'s |θ − θ₀| below and above the band and equal to its first
    /// `heavyLanes` heavy values. Eight lanes at a time, as 32-bit compares whose all-ones result is
    /// subtracted: one compare and one subtraction per count (both patterns are below 2³¹, so signed
    /// compares order them), where branch-free integer formulas like `isEqual` took two more
    /// operations each; on AVX2 the loop took half the time.
    @inline(__always)
    private static func tally<Theta: FineTuneBlock>(_ band: Band, theta: Theta, base: UnsafePointer<Float>, range: Range<Int>,
                                                    heavyLanes: Int) -> (below: Int, above: Int, equal: SIMD4<Int>) {
        typealias Lanes = SIMD8<Int32>
        let lo = Lanes(repeating: Int32(band.lo)), hi = Lanes(repeating: Int32(band.hi))
        let h0 = Lanes(repeating: Int32(band.heavy[0])), h1 = Lanes(repeating: Int32(band.heavy[1]))
        let h2 = Lanes(repeating: Int32(band.heavy[2])), h3 = Lanes(repeating: Int32(band.heavy[3]))
        let zero = Lanes(repeating: 0), one = Lanes(repeating: 1)
        var below = zero, above = zero, e0 = zero, e1 = zero, e2 = zero, e3 = zero
        var j = range.lowerBound
        while j + Lanes.scalarCount <= range.upperBound {
            let tau = theta.lanes(j) - UnsafeRawPointer(base + j).loadUnaligned(as: SIMD8<Float>.self)
            let m = unsafeBitCast(tau, to: Lanes.self) & Lanes(repeating: 0x7FFF_FFFF)
            below &+= zero.replacing(with: one, where: m .< lo)
            above &+= zero.replacing(with: one, where: m .> hi)
            e0 &+= zero.replacing(with: one, where: m .== h0)
            e1 &+= zero.replacing(with: one, where: m .== h1)
            if heavyLanes > 2 {
                e2 &+= zero.replacing(with: one, where: m .== h2)
                e3 &+= zero.replacing(with: one, where: m .== h3)
            }
            j += Lanes.scalarCount
        }
        var result = (below: Int(below.wrappedSum()), above: Int(above.wrappedSum()),
                      equal: SIMD4(Int(e0.wrappedSum()), Int(e1.wrappedSum()), Int(e2.wrappedSum()), Int(e3.wrappedSum())))
        for k in j..<range.upperBound {
            let m = magnitudeBits(theta[k] - base[k])
            result.below += m < band.lo ? 1 : 0
            result.above += m > band.hi ? 1 : 0
            for lane in 0..<heavyLanes { result.equal[lane] += m == band.heavy[lane] ? 1 : 0 }
        }
        return result
    }

    /// A fine-tune's exact threshold, and when it is one of the band's heavy values, how many
    /// elements of each chunk equal it.
    struct Exact {
        var threshold: MagnitudeThreshold
        var tiesPerChunk: [Int]?
    }

    /// The exact thresholds keeping `ranks[i]` elements of fine-tune i, or nil when some rank fell
    /// outside its band or a fine-tune's light values outgrew their limit.
    func exactThresholds(ranks: [Int]) -> [Exact?]? {
        var result: [Exact?] = Array(repeating: nil, count: modelCount)
        for model in 0..<modelCount {
            guard let band = bands[model] else { continue }
            guard light.allSatisfy({ $0[model].count <= lightLimit }) else { return nil }
            var above = 0
            var heavyTotals = [Int](repeating: 0, count: band.heavyCount)
            for chunk in 0..<chunkCount {
                let counts = count(chunk: chunk, model: model)
                above += counts[0]
                for slot in 0..<band.heavyCount { heavyTotals[slot] += counts[1 + slot] }
            }
            let lightValues = light.flatMap { Array($0[model].values) }
            let rank = ranks[model] - above
            guard rank >= 1 && rank <= lightValues.count + heavyTotals.reduce(0, +) else { return nil }
            let weighted = (0..<band.heavyCount).map { (value: band.heavy[$0], count: heavyTotals[$0]) }
            let bits = lightValues.withUnsafeBufferPointer { largest(rank, of: $0, weighted: weighted) }
            var greater = 0, equal = 0
            for value in lightValues {
                greater += value > bits ? 1 : 0
                equal += value == bits ? 1 : 0
            }
            for (value, total) in weighted {
                if value > bits { greater += total }
                if value == bits { equal += total }
            }
            let heavySlot = (0..<band.heavyCount).first { band.heavy[$0] == bits }
            result[model] = Exact(
                threshold: MagnitudeThreshold(bits: bits, rank: ranks[model], above: above + greater, equal: equal),
                tiesPerChunk: heavySlot.map { slot in (0..<chunkCount).map { count(chunk: $0, model: model)[1 + slot] } })
        }
        return result
    }
}

extension MagnitudeBands {
    /// A fine-tune's band from its `sample` of |τ| bit patterns, for keeping the `rank` largest of
    /// `elementCount`, or nil when light values would be common (more than 1/512 of the sample): every
    /// piece would then be scanned for them, and the histograms are cheaper. `table` is 131,072
    /// zeroed bins, left zeroed.
    static func predict(_ sample: UnsafeBufferPointer<UInt32>, rank: Int, elementCount: Int, table: UnsafeMutablePointer<UInt32>) -> Band? {
        let size = sample.count
        // The sample's rank for k, and a margin of 4.5 standard deviations of the sample's count above
        // a quantile (binomial): the exact threshold lies between the values at the margin's ends
        // unless the sample is off by more than that.
        let q = Double(rank) / Double(elementCount)
        let sampleRank = min(size, max(1, Int((q * Double(size)).rounded())))
        let margin = Int((4.5 * (Double(size) * q * (1 - q)).squareRoot()).rounded(.up)) + 2
        let upper = max(1, sampleRank - margin), lower = min(size, sampleRank + margin)
        // Bins as in the first-pass histogram: 2h for the values with high bits h and low bits zero
        // (bf16-exact, the heavy candidates), 2h + 1 for the others.
        var top = 0
        for value in sample {
            let key = Int(value >> 15) & ~1 | (value & 0xFFFF == 0 ? 0 : 1)
            table[key] &+= 1
            top = max(top, key)
        }
        var seen = 0, hiKey = -1, loKey = 0
        var key = top
        while key >= 0 {
            seen += Int(table[key])
            if hiKey < 0 && seen >= upper { hiKey = key }
            if seen >= lower { loKey = key; break }
            key -= 1
        }
        let hi = UInt32(hiKey >> 1) << 16 | (hiKey & 1 == 0 ? 0 : 0xFFFF)
        let lo = UInt32(loKey >> 1) << 16 | (loKey & 1 == 0 ? 0 : 1)
        // Heavy: exact values holding at least 1/2048 of the sample, the most frequent first.
        let frequent = max(8, size / 2048)
        let heavyKeys = stride(from: (loKey + 1) & ~1, through: hiKey, by: 2).filter { Int(table[$0]) >= frequent }
            .sorted { table[$0] > table[$1] }.prefix(maximumHeavyValues)
        let lights = (loKey...hiKey).reduce(0) { $0 + Int(table[$1]) } - heavyKeys.reduce(0) { $0 + Int(table[$1]) }
        for value in sample { table[Int(value >> 15) & ~1 | (value & 0xFFFF == 0 ? 0 : 1)] = 0 }
        guard lights <= size / 512 else { return nil }
        return Band(lo: lo, hi: hi, heavy: heavyKeys.map { UInt32($0 >> 1) << 16 })
    }
}

/// The `rank`-th largest (1-based) of `values` together with `weighted` values present `count`
/// times each, for bit patterns below 2³¹: a 65,536-bin histogram of the high 16 bits finds the
/// rank's bin, and a 32,768-bin histogram of the low 15 bits of that bin's values the value.
func largest(_ rank: Int, of values: UnsafeBufferPointer<UInt32>, weighted: [(value: UInt32, count: Int)]) -> UInt32 {
    var high = [Int](repeating: 0, count: 65536)
    for value in values { high[Int(value >> 15)] += 1 }
    for (value, count) in weighted { high[Int(value >> 15)] += count }
    var remaining = rank, bin = 65535
    while remaining > high[bin] {
        remaining -= high[bin]
        bin -= 1
        precondition(bin >= 0, "rank \(rank) exceeds the values")
    }
    var low = [Int](repeating: 0, count: 32768)
    let key = UInt32(bin)
    for value in values where value >> 15 == key { low[Int(value & 0x7FFF)] += 1 }
    for (value, count) in weighted where value >> 15 == key { low[Int(value & 0x7FFF)] += count }
    var lowBits = 32767
    while remaining > low[lowBits] {
        remaining -= low[lowBits]
        lowBits -= 1
    }
    return key << 15 | UInt32(lowBits)
}

/// A growable array of bit patterns, in a buffer that doubles (a Swift array of arrays cost ~20 ns
/// per append here).
final class GrowingValues {
    private var storage = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
    private var capacity = 256
    private(set) var count = 0

    deinit { storage.deallocate() }

    @inline(__always)
    func append(_ value: UInt32) {
        if count == capacity {
            let grown = UnsafeMutablePointer<UInt32>.allocate(capacity: 2 * capacity)
            grown.update(from: storage, count: count)
            storage.deallocate()
            storage = grown
            capacity *= 2
        }
        storage[count] = value
        count += 1
    }

    var values: UnsafeBufferPointer<UInt32> { UnsafeBufferPointer(start: storage, count: count) }
}
