// IdentityTests: DESIGN.md §7's identities, and chunking/thread independence, on in-memory tensors.
import MergeMethods
import Testing

/// Runs one tensor's merge over in-memory inputs with the given chunk size and thread count.
func mergeInMemory(
    _ method: MergeMethod, base: [Float], models: [[Float]], parameters: TensorMergeParameters,
    chunkSize: Int = 64, blockSize: Int = 16, threads: Int = 1, seed: UInt64 = 0, name: String = "layers.0.mlp.up_proj.weight",
    bandMinimumElements: Int = .max, countedInBands: UnsafeMutablePointer<Bool>? = nil
) -> [Float] {
    let inputs = [base] + models
    let read: ChunkReader = { model, elements, destination in
        let source = inputs[(model ?? -1) + 1]
        for (offset, j) in elements.enumerated() { destination[offset] = source[j] }
    }
    let merger = TensorMerger(method: method, parameters: parameters, elementCount: base.count, canonicalName: name,
                              seed: seed, chunkSize: chunkSize, read: read)
    merger.bandMinimumElements = bandMinimumElements
    let workspaces = (0..<threads).map { _ in MergeWorkspace(modelCount: models.count, blockSize: blockSize) }
    merger.prepare(threads: threads, workspaces: workspaces, window: 3 * threads)
    countedInBands?.pointee = merger.countedInBands
    var output = [Float](repeating: .nan, count: base.count)
    output.withUnsafeMutableBufferPointer { out in
        // Windows of more chunks than workers, as the executor merges them.
        for first in stride(from: 0, to: merger.chunkCount, by: 3 * threads) {
            let count = min(3 * threads, merger.chunkCount - first)
            merger.mergeWindow(first: first, count: count, workspaces: workspaces, threads: threads) { slot, offset, values, n in
                for j in 0..<n { out[(first + slot) * chunkSize + offset + j] = values[j] }
            }
        }
    }
    return output
}

/// Deterministic pseudo-random values (the test must not depend on global randomness).
func values(_ count: Int, seed: UInt64, scale: Float) -> [Float] {
    (0..<count).map { Float(Double(splitMix64(seed &* 1000 &+ UInt64($0)) >> 11) * 0x1p-53 - 0.5) * 2 * scale }
}

@Suite("Merge identities")
struct IdentityTests {
    let base = values(1000, seed: 1, scale: 0.05)

    @Test("All task vectors zero give the base exactly", arguments: MergeMethod.allCases.filter { $0 != .linear })
    func zeroTaskVectors(method: MergeMethod) {
        let parameters = TensorMergeParameters(weights: [1, 0.5, 2], densities: [0.5, 0.7, 0.3], lambda: 0.8, normalize: method.normalizesByDefault)
        let merged = mergeInMemory(method, base: base, models: [base, base, base], parameters: parameters)
        #expect(merged == base)
    }

    @Test("T identical fine-tunes with task arithmetic λ = 1/T give that fine-tune")
    func identicalFineTunes() {
        let tuned = zip(base, values(1000, seed: 2, scale: 0.01)).map(+)
        let merged = mergeInMemory(.taskArithmetic, base: base, models: [tuned, tuned, tuned],
                                   parameters: .init(weights: [1, 1, 1], densities: [1, 1, 1], lambda: 1.0 / 3, normalize: false))
        let (error, _) = maxAbsError(merged, tuned)
        #expect(error < 1e-7)
    }

    @Test("DARE with density 1 is the underlying merge", arguments: [(MergeMethod.dareLinear, MergeMethod.taskArithmetic), (.dareTies, .ties)])
    func dareDensityOne(dare: MergeMethod, underlying: MergeMethod) {
        let models = (3...5).map { s in zip(base, values(1000, seed: UInt64(s), scale: 0.01)).map(+) }
        let parameters = TensorMergeParameters(weights: [1, 0.6, 0.8], densities: [1, 1, 1], lambda: 0.9, normalize: true)
        #expect(mergeInMemory(dare, base: base, models: models, parameters: parameters)
                == mergeInMemory(underlying, base: base, models: models, parameters: parameters))
    }

    @Test("TIES with density 1 and agreeing signs is θ₀ + λ·Σwᵢτᵢ/Σwᵢ")
    func tiesAgreeingSigns() {
        let direction = values(1000, seed: 9, scale: 0.01)
        let scales: [Float] = [1, 0.5, 2]
        let models = scales.map { s in zip(base, direction).map { $0 + s * $1 } }
        let weights: [Float] = [1, 0.6, 0.8]
        let merged = mergeInMemory(.ties, base: base, models: models,
                                   parameters: .init(weights: weights, densities: [1, 1, 1], lambda: 0.7, normalize: true))
        let expected = (0..<1000).map { j -> Float in
            let tau = models.map { $0[j] - base[j] }
            let sum = zip(weights, tau).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            return base[j] + 0.7 * (sum / weights.reduce(0, +))
        }
        #expect(maxAbsError(merged, expected).error < 1e-6)
    }

    @Test("TIES's sign election and task arithmetic's sum equal a scalar reference bit for bit, for 1 to 10 fine-tunes",
          arguments: 1...10)
    func combineAnyModelCount(modelCount: Int) {
        // Up to eight fine-tunes take loops specialised for their count, more the general one.
        let models = (0..<modelCount).map { i in zip(base, values(1000, seed: UInt64(30 + i), scale: 0.01)).map(+) }
        let weights = (0..<modelCount).map { Float(1 + $0 % 3) * 0.4 }
        for method in [MergeMethod.ties, .taskArithmetic] {
            let parameters = TensorMergeParameters(weights: weights, densities: Array(repeating: 1, count: modelCount),
                                                   lambda: 0.7, normalize: method == .ties)
            let merged = mergeInMemory(method, base: base, models: models, parameters: parameters)
            // The reference's operations in its order: dᵢ = wᵢτᵢ summed from 0, then the agreeing dᵢ and wᵢ.
            let expected = (0..<base.count).map { j -> Float in
                let d = (0..<modelCount).map { weights[$0] * (models[$0][j] - base[j]) }
                guard method == .ties else { return base[j] + 0.7 * d.reduce(Float(0), +) }
                let positive = d.reduce(Float(0), +) >= 0
                var mixed: Float = 0, divisor: Float = 0
                for (i, di) in d.enumerated() where positive ? di > 0 : di < 0 {
                    mixed = mixed + di
                    divisor = divisor + weights[i]
                }
                return base[j] + 0.7 * (mixed / (divisor == 0 ? 1 : divisor))
            }
            #expect(merged.map(\.bitPattern) == expected.map(\.bitPattern), "\(method), \(modelCount) fine-tunes")
        }
    }

    @Test("TIES keeps exactly ⌊density·n⌋ elements per task vector, ties broken by lower index")
    func tiesKeepsTopK() {
        // One fine-tune, normalize off, λ 1: the output minus base is exactly the trimmed τ.
        var tau = values(1000, seed: 11, scale: 1)
        for j in stride(from: 0, to: 1000, by: 10) { tau[j] = 0.25 }  // 100 ties straddling the threshold
        let tuned = zip(base, tau).map(+)
        let merged = mergeInMemory(.ties, base: base, models: [tuned],
                                   parameters: .init(weights: [1], densities: [0.5], lambda: 1, normalize: false), chunkSize: 37)
        let kept = (0..<1000).filter { merged[$0] != base[$0] }
        #expect(kept.count == 500)
        let order = (0..<1000).sorted { (abs(tuned[$0] - base[$0]), -$0) > (abs(tuned[$1] - base[$1]), -$1) }
        #expect(Set(kept) == Set(order.prefix(500)))
    }

    @Test("TIES's threshold is exact on uniform and on chunk-wise skewed magnitudes", arguments: [false, true])
    func tiesSkewedChunks(misleading: Bool) {
        // With `misleading`, the first sixteenth of every chunk holds magnitudes 1000× smaller than the rest.
        let chunkSize = 160
        var tau = values(1600, seed: 31, scale: 1)
        if misleading {
            for chunk in 0..<10 { for j in 0..<(chunkSize / 16) { tau[chunk * chunkSize + j] *= 0.001 } }
        }
        let base = [Float](repeating: 0, count: 1600)
        let merged = mergeInMemory(.ties, base: base, models: [tau],
                                   parameters: .init(weights: [1], densities: [0.3], lambda: 1, normalize: false),
                                   chunkSize: chunkSize, threads: 2)
        let order = (0..<1600).sorted { (abs(tau[$0]), -$0) > (abs(tau[$1]), -$1) }
        #expect(Set((0..<1600).filter { merged[$0] != 0 }) == Set(order.prefix(480)))
    }

    @Test("TIES's threshold is exact when the k-th |τ| is bf16-exact (one pass) and when it is not (two)",
          arguments: [0.35, 0.6, 0.9])
    func tiesExactAndInexactBins(density: Double) {
        // 5,000 elements of 0.5; 3,000 distinct values just above 0.25 (same high 16 bits, low bits set);
        // 6,000 of exactly 0.25; 6,000 of 0.1. Density 0.35 puts the k-th largest among the inexact ones
        // (second pass); 0.6 among the exact 0.25s (one pass, 4,000 of 6,000 ties kept, in index order,
        // across windows where ties are counted while merging and where they are counted first); 0.9 below.
        let n = 20000
        var tau = [Float](repeating: 0.1, count: n)
        var slots = Array(0..<n)
        var state: UInt64 = 7
        for i in stride(from: n - 1, to: 0, by: -1) {
            state = splitMix64(state)
            slots.swapAt(i, Int(state % UInt64(i + 1)))
        }
        for (position, j) in slots.enumerated() {
            switch position {
            case ..<5000: tau[j] = 0.5
            case ..<8000: tau[j] = Float(bitPattern: Float(0.25).bitPattern + UInt32(1 + position % 4000))
            case ..<14000: tau[j] = 0.25
            default: break
            }
            if position % 3 == 0 { tau[j] = -tau[j] }
        }
        let base = [Float](repeating: 0, count: n)
        let k = Int(density * Double(n))
        let order = (0..<n).sorted { (abs(tau[$0]), -$0) > (abs(tau[$1]), -$1) }
        let parameters = TensorMergeParameters(weights: [1], densities: [density], lambda: 1, normalize: false)
        for (chunkSize, threads) in [(64, 2), (20000, 1), (333, 3)] {
            let merged = mergeInMemory(.ties, base: base, models: [tau], parameters: parameters, chunkSize: chunkSize, threads: threads)
            #expect(Set((0..<n).filter { merged[$0] != 0 }) == Set(order.prefix(k)), "chunk \(chunkSize), threads \(threads)")
        }
    }

    @Test("TIES's thresholds counted in sampled bands equal the histograms'; misleading or light-heavy samples take the histograms",
          arguments: [0.2, 0.5, 0.8])
    func tiesSampledBands(density: Double) {
        // Task vectors like a bf16 checkpoint's: d·2⁻ᵉ for d in 1...7 and a few exponents, so a handful of
        // magnitudes each hold percents of the tensor (heavy values, counted), plus scattered inexact
        // ones (light values, kept); 64 chunks of 1,024. `misleading` makes the chunks the sample reads
        // (piece p of 16 lies in chunk ⌊p·63/16⌋) 1000× larger, so its bands miss and the histograms decide.
        // `continuous` gives every element its own magnitude, as f32 checkpoints do: the sample shows
        // light values everywhere, and the histograms decide from the start.
        let n = 1 << 16, chunkSize = 1024
        let sampled = Set((0..<16).map { $0 * 63 / 16 })
        for (misleading, continuous) in [(false, false), (true, false), (false, true)] {
            let models = (0..<3).map { model in
                (0..<n).map { j -> Float in
                    let state = splitMix64(UInt64(model * n + j) &+ 17)
                    var tau = Float(state % 8) * Float(sign: .plus, exponent: -8 - Int(state >> 8 % 4), significand: 1)
                    if state >> 20 % 2003 == 0 || continuous { tau += Float(state >> 32 % 1000) * 1e-7 }
                    if misleading && sampled.contains(j / chunkSize) { tau *= 1000 }
                    return (state >> 40) & 1 == 0 ? tau : -tau
                }
            }
            // Multiples of 2⁻⁷, so that θ − θ₀ gives τ back exactly, as for bf16 checkpoints.
            let base = (0..<n).map { Float($0 % 64 - 32) / 128 }
            let thetas = models.map { zip(base, $0).map(+) }
            let parameters = TensorMergeParameters(weights: [1, 0.8, 0.6], densities: [density, 0.5, density], lambda: 1, normalize: false)
            let histograms = mergeInMemory(.ties, base: base, models: thetas, parameters: parameters, chunkSize: chunkSize, blockSize: 256, threads: 2)
            var inBands = false
            let banded = mergeInMemory(.ties, base: base, models: thetas, parameters: parameters, chunkSize: chunkSize, blockSize: 256,
                                       threads: 2, bandMinimumElements: 0, countedInBands: &inBands)
            #expect(inBands == !(misleading || continuous), "misleading \(misleading), continuous \(continuous)")
            #expect(banded.map(\.bitPattern) == histograms.map(\.bitPattern), "misleading \(misleading), continuous \(continuous)")
        }
    }

    @Test("Output does not depend on chunk size or thread count", arguments: MergeMethod.allCases)
    func chunkingAndThreads(method: MergeMethod) {
        let models = (3...5).map { s in zip(base, values(1000, seed: UInt64(s), scale: 0.01)).map(+) }
        var parameters = TensorMergeParameters(weights: [1, 0.6, 0.8], densities: [0.4, 0.6, 0.5], lambda: 0.9, normalize: method.normalizesByDefault)
        let reference = mergeInMemory(method, base: base, models: models, parameters: parameters, chunkSize: 1000, threads: 1, seed: 3)
        #expect(mergeInMemory(method, base: base, models: models, parameters: parameters, chunkSize: 64, threads: 3, seed: 3) == reference)
        #expect(mergeInMemory(method, base: base, models: models, parameters: parameters, chunkSize: 7, threads: 2, seed: 3) == reference)
        if method == .dareTies || method == .dareLinear {
            #expect(mergeInMemory(method, base: base, models: models, parameters: parameters, seed: 4) != reference, "the seed must matter")
            parameters.rescale = .l1
            let l1 = mergeInMemory(method, base: base, models: models, parameters: parameters, chunkSize: 1000, seed: 3)
            #expect(mergeInMemory(method, base: base, models: models, parameters: parameters, chunkSize: 13, threads: 2, seed: 3) == l1)
        }
    }

    @Test("The DARE stream draws what tools/reference_merge.py's does, also past element 2³²")
    func dareStreamMatchesReference() {
        // tools/reference_merge.py: dare_mask("model.layers.0.mlp.up_proj.weight", 7, 1, 16, 0.3, start).
        let stream = DropoutStream(seed: 7, tensorName: "model.layers.0.mlp.up_proj.weight", modelIndex: 1)
        let threshold = DropoutStream.keepThreshold(density: 0.3)
        for (start, expected) in [(0, "1100000100011000"), ((1 << 32) - 8, "0101100110100100")] {
            var mask = [Float](repeating: -1, count: 16)
            mask.withUnsafeMutableBufferPointer { stream.fillMask($0.baseAddress!, elements: start..<start + 16, threshold: threshold) }
            #expect(mask.map { $0 == 1 ? "1" : $0 == 0 ? "0" : "?" }.joined() == expected, "elements from \(start)")
        }
    }

    @Test("DARE keeps about density of the elements and rescales them by 1/density")
    func dareRescale() {
        let tau = [Float](repeating: 0.01, count: 20000)
        let base = [Float](repeating: 0, count: 20000)
        let merged = mergeInMemory(.dareLinear, base: base, models: [tau],
                                   parameters: .init(weights: [1], densities: [0.3], lambda: 1, normalize: false), chunkSize: 4096)
        let kept = merged.filter { $0 != 0 }
        #expect(abs(Double(kept.count) / 20000 - 0.3) < 0.02)
        #expect(kept.allSatisfy { $0 == Float(0.01) / Float(0.3) })
    }

    @Test("linear is the weighted mean of the models and ignores the base")
    func linear() {
        let a = values(100, seed: 20, scale: 1), b = values(100, seed: 21, scale: 1)
        let merged = mergeInMemory(.linear, base: [Float](repeating: 99, count: 100), models: [a, b],
                                   parameters: .init(weights: [1, 3], densities: [1, 1], normalize: true))
        #expect(maxAbsError(merged, zip(a, b).map { ($0 + 3 * $1) / 4 }).error < 1e-6)
    }
}

func maxAbsError(_ a: [Float], _ b: [Float]) -> (error: Float, index: Int) {
    var worst: Float = 0, at = -1
    for i in a.indices where abs(a[i] - b[i]) > worst || a[i].isNaN { worst = abs(a[i] - b[i]); at = i }
    return (worst, at)
}
