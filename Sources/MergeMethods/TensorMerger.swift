// TensorMerger: merges one tensor chunk by chunk, so memory is bounded by the chunk size, not the tensor.
import Dispatch

/// Reads elements `elements` of a model's tensor as f32 into the buffer; `model` nil is the base.
public typealias ChunkReader = @Sendable (_ model: Int?, _ elements: Range<Int>, _ into: UnsafeMutablePointer<Float>) -> Void

/// Tells the source that elements `elements` of every input have been read and their pages may go.
/// Called once per window while merging (one `madvise` per input, not per chunk) and per chunk in
/// the preparation passes.
public typealias ChunkReleaser = @Sendable (_ elements: Range<Int>) -> Void

/// Per-thread scratch: one chunk of the base, of each fine-tune, and of three running sums.
public final class MergeWorkspace: @unchecked Sendable {
    let base: UnsafeMutablePointer<Float>
    let models: [UnsafeMutablePointer<Float>]
    let accumulator: UnsafeMutablePointer<Float>
    let divisor: UnsafeMutablePointer<Float>
    let scratch: UnsafeMutablePointer<Float>
    let chunkSize: Int

    public init(modelCount: Int, chunkSize: Int) {
        self.chunkSize = chunkSize
        base = .allocate(capacity: chunkSize)
        models = (0..<modelCount).map { _ in .allocate(capacity: chunkSize) }
        accumulator = .allocate(capacity: chunkSize)
        divisor = .allocate(capacity: chunkSize)
        scratch = .allocate(capacity: chunkSize)
    }

    deinit {
        base.deallocate()
        models.forEach { $0.deallocate() }
        accumulator.deallocate()
        divisor.deallocate()
        scratch.deallocate()
    }

    /// Bytes held, for memory estimates.
    public static func byteCount(modelCount: Int, chunkSize: Int) -> Int { (modelCount + 4) * chunkSize * 4 }
}

/// Runs `body(worker, chunk)` over `chunkCount` chunks on `threads` workers, chunk c on worker c % threads.
/// Results may depend only on the chunk, never on the worker, which keeps output independent of `threads`.
public func forEachChunk(_ chunkCount: Int, threads: Int, _ body: (_ worker: Int, _ chunk: Int) -> Void) {
    let workers = max(1, min(threads, chunkCount))
    if workers == 1 {
        for chunk in 0..<chunkCount { body(0, chunk) }
        return
    }
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
        for chunk in stride(from: worker, to: chunkCount, by: workers) { body(worker, chunk) }
    }
}

/// One tensor's merge. `prepare` runs the whole-tensor passes a method needs (TIES thresholds,
/// DARE's L1 norms); `mergeWindow` then produces the chunks, a window of them at a time, in order.
public final class TensorMerger: @unchecked Sendable {
    public let method: MergeMethod
    public let parameters: TensorMergeParameters
    public let elementCount: Int
    public let chunkSize: Int
    let read: ChunkReader
    let release: ChunkReleaser
    let modelCount: Int
    let dropout: [DropoutStream]
    var thresholds: [MagnitudeThreshold]
    /// Per fine-tune multiplier applied to kept DARE elements.
    var dareScale: [Float]
    /// Merging state: the next chunk `mergeWindow` expects, and per fine-tune the TIES ties seen so far.
    var nextChunk = 0
    var tiesSeen: [Int]

    public init(method: MergeMethod, parameters: TensorMergeParameters, elementCount: Int, canonicalName: String,
                seed: UInt64, chunkSize: Int, read: @escaping ChunkReader, release: @escaping ChunkReleaser = { _ in }) {
        self.method = method
        self.parameters = parameters
        self.elementCount = elementCount
        self.chunkSize = chunkSize
        self.read = read
        self.release = release
        modelCount = parameters.weights.count
        dropout = (0..<parameters.weights.count).map { DropoutStream(seed: seed, tensorName: canonicalName, modelIndex: $0) }
        thresholds = Array(repeating: .keepEverything, count: parameters.weights.count)
        dareScale = parameters.densities.map { $0 >= 1 ? 1 : Float(1 / $0) }
        tiesSeen = Array(repeating: 0, count: parameters.weights.count)
    }

    public var chunkCount: Int { (elementCount + chunkSize - 1) / chunkSize }

    func elements(ofChunk chunk: Int) -> Range<Int> {
        (chunk * chunkSize)..<min(elementCount, (chunk + 1) * chunkSize)
    }

    /// Whether `prepare` has whole-tensor passes to run.
    var needsPreparation: Bool {
        switch method.sparsification {
        case .magnitude: parameters.densities.contains { $0 < 1 }
        case .random: parameters.rescale == .l1 && parameters.densities.contains { $0 < 1 }
        case .none: false
        }
    }

    /// Loads the base chunk and the task vectors τᵢ = θᵢ − θ₀ of `chunk` into `workspace`.
    func loadTaskVectors(chunk: Int, _ workspace: MergeWorkspace) -> Range<Int> {
        let range = elements(ofChunk: chunk)
        read(nil, range, workspace.base)
        for model in 0..<modelCount {
            let tau = workspace.models[model]
            read(model, range, tau)
            for j in 0..<range.count { tau[j] = tau[j] - workspace.base[j] }
        }
        return range
    }

    // MARK: - Preparation passes

    /// Runs the whole-tensor passes: radix select for TIES, norms for L1-rescaled DARE.
    public func prepare(threads: Int, workspaces: [MergeWorkspace]) {
        guard needsPreparation else { return }
        switch method.sparsification {
        case .magnitude: prepareMagnitude(threads: threads, workspaces: workspaces)
        case .random: prepareL1Rescale(threads: threads, workspaces: workspaces)
        case .none: break
        }
    }

    private func prepareMagnitude(threads: Int, workspaces: [MergeWorkspace]) {
        precondition(elementCount < Int(UInt32.max), "TIES histograms count at most 2³² − 1 elements per tensor")
        let workers = workspaces.count
        let targets: [Int] = parameters.densities.map { $0 >= 1 ? -1 : Int($0 * Double(elementCount)) }

        // Pass 1: histogram of the high 16 bits of |τ| per fine-tune.
        var high = Array(repeating: Array(repeating: Histogram16(), count: modelCount), count: workers)
        high.withUnsafeMutableBufferPointer { perWorker in
            forEachChunk(chunkCount, threads: min(threads, workers)) { worker, chunk in
                let range = loadTaskVectors(chunk: chunk, workspaces[worker])
                defer { release(range) }
                for model in 0..<modelCount where targets[model] > 0 {
                    let tau = workspaces[worker].models[model]
                    perWorker[worker][model].counts.withUnsafeMutableBufferPointer { counts in
                        for j in 0..<range.count { counts[Int(magnitudeBits(tau[j]) >> 16)] += 1 }
                    }
                }
            }
        }
        var highBin = [Int](repeating: 0, count: modelCount)
        var aboveHigh = [Int](repeating: 0, count: modelCount)
        for model in 0..<modelCount where targets[model] > 0 {
            var total = Histogram16()
            for worker in 0..<workers { total.add(high[worker][model]) }
            (highBin[model], aboveHigh[model]) = total.binHolding(rank: targets[model])
        }

        // Pass 2: histogram of the low 16 bits among elements in the selected high bin.
        var low = Array(repeating: Array(repeating: Histogram16(), count: modelCount), count: workers)
        low.withUnsafeMutableBufferPointer { perWorker in
            forEachChunk(chunkCount, threads: min(threads, workers)) { worker, chunk in
                let range = loadTaskVectors(chunk: chunk, workspaces[worker])
                defer { release(range) }
                for model in 0..<modelCount where targets[model] > 0 {
                    let tau = workspaces[worker].models[model]
                    let bin = UInt32(highBin[model])
                    perWorker[worker][model].counts.withUnsafeMutableBufferPointer { counts in
                        for j in 0..<range.count {
                            let bits = magnitudeBits(tau[j])
                            if bits >> 16 == bin { counts[Int(bits & 0xFFFF)] += 1 }
                        }
                    }
                }
            }
        }
        for model in 0..<modelCount {
            if targets[model] < 0 { thresholds[model] = .keepEverything; continue }
            if targets[model] == 0 {
                thresholds[model] = MagnitudeThreshold(thresholdBits: 0, keptAtThreshold: 0, dropsSomeTies: false, keepAll: false, keepNone: true)
                continue
            }
            var total = Histogram16()
            for worker in 0..<workers { total.add(low[worker][model]) }
            let (lowBin, aboveLow) = total.binHolding(rank: targets[model] - aboveHigh[model])
            let kept = targets[model] - aboveHigh[model] - aboveLow
            thresholds[model] = MagnitudeThreshold(
                thresholdBits: UInt32(highBin[model]) << 16 | UInt32(lowBin), keptAtThreshold: kept,
                dropsSomeTies: kept < Int(total.counts[lowBin]), keepAll: false, keepNone: false)
        }
    }

    /// DARE with L1 rescaling: the multiplier ‖τ‖₁ / ‖τ ⊙ m‖₁ needs both norms over the whole tensor.
    /// Partial sums are kept per chunk in f64 and added in chunk order, so the result is the same for any thread count.
    private func prepareL1Rescale(threads: Int, workspaces: [MergeWorkspace]) {
        let workers = workspaces.count
        var partial = Array(repeating: [(full: Double, kept: Double)](repeating: (0, 0), count: chunkCount), count: modelCount)
        partial.withUnsafeMutableBufferPointer { perModel in
            forEachChunk(chunkCount, threads: min(threads, workers)) { worker, chunk in
                let range = loadTaskVectors(chunk: chunk, workspaces[worker])
                defer { release(range) }
                for model in 0..<modelCount where parameters.densities[model] < 1 {
                    let tau = workspaces[worker].models[model]
                    var full = 0.0, kept = 0.0
                    let mask = workspaces[worker].scratch
                    dropout[model].fillMask(mask, elements: range, threshold: DropoutStream.keepThreshold(density: parameters.densities[model]))
                    for j in 0..<range.count {
                        let magnitude = Double(abs(tau[j]))
                        full += magnitude
                        kept += magnitude * Double(mask[j])
                    }
                    perModel[model][chunk] = (full, kept)
                }
            }
        }
        for model in 0..<modelCount where parameters.densities[model] < 1 {
            let full = partial[model].reduce(0) { $0 + $1.full }
            let kept = partial[model].reduce(0) { $0 + $1.kept }
            dareScale[model] = kept > 0 ? Float(full / kept) : 1
        }
    }

    // MARK: - Merging

    /// Merges chunks `first ..< first + outputs.count` (one per workspace and output buffer, chunk-sized
    /// f32) on up to `threads` workers. Windows must come in order: where TIES drops some of the elements
    /// tied at its threshold, which ones depends on how many ties earlier chunks held, so each window
    /// first loads its chunks and counts their ties, then sparsifies and combines them.
    public func mergeWindow(first: Int, workspaces: [MergeWorkspace], outputs: [UnsafeMutablePointer<Float>], threads: Int) {
        precondition(first == nextChunk, "windows must be merged in order")
        let count = outputs.count
        var tieCounts = Array(repeating: [Int](repeating: 0, count: modelCount), count: count)
        tieCounts.withUnsafeMutableBufferPointer { counts in
            forEachChunk(count, threads: threads) { _, slot in
                counts[slot] = load(chunk: first + slot, workspaces[slot])
            }
        }
        release(elements(ofChunk: first).lowerBound..<elements(ofChunk: first + count - 1).upperBound)
        var tieRanges: [[Range<Int>]] = []
        for slot in 0..<count {
            tieRanges.append((0..<modelCount).map { model in
                let before = tiesSeen[model]
                tiesSeen[model] += tieCounts[slot].isEmpty ? 0 : tieCounts[slot][model]
                return before..<tiesSeen[model]
            })
        }
        forEachChunk(count, threads: threads) { _, slot in
            combine(chunk: first + slot, workspaces[slot], ties: tieRanges[slot], into: outputs[slot])
        }
        nextChunk += count
    }

    /// Reads a chunk's inputs into `workspace` (τᵢ, or θᵢ for linear) and counts, per fine-tune whose
    /// threshold drops some ties, the elements tied at it.
    private func load(chunk: Int, _ workspace: MergeWorkspace) -> [Int] {
        let range = elements(ofChunk: chunk)
        if method == .linear {
            for model in 0..<modelCount { read(model, range, workspace.models[model]) }
            return []
        }
        _ = loadTaskVectors(chunk: chunk, workspace)
        return thresholds.enumerated().map { model, threshold in
            guard threshold.dropsSomeTies else { return 0 }
            let tau = workspace.models[model], bits = threshold.thresholdBits
            var ties = 0
            for j in 0..<range.count { ties += magnitudeBits(tau[j]) == bits ? 1 : 0 }
            return ties
        }
    }

    /// Sparsifies the loaded task vectors and combines them into the merged chunk. `ties[i]` numbers the
    /// elements of this chunk tied at fine-tune i's TIES threshold, counted over the whole tensor.
    private func combine(chunk: Int, _ workspace: MergeWorkspace, ties: [Range<Int>], into output: UnsafeMutablePointer<Float>) {
        let range = elements(ofChunk: chunk)
        let count = range.count
        if method == .linear { return combineLinear(count: count, workspace, output) }
        for model in 0..<modelCount {
            sparsify(model: model, range: range, ties: ties[model], workspace.models[model], scratch: workspace.scratch)
        }
        let weights = parameters.weights
        let acc = workspace.accumulator
        let div = workspace.divisor
        if method.electsSign {
            // dᵢ = wᵢ·τ̂ᵢ; the majority sign is the sign of Σdᵢ (≥ 0 → +); only dᵢ of that sign are summed,
            // and with normalize divided by the sum of their weights. Loops run model by model over
            // the chunk so they vectorise; the additions happen in the reference's order per element.
            let sum = workspace.scratch
            sum.update(repeating: 0, count: count)
            acc.update(repeating: 0, count: count)
            div.update(repeating: 0, count: count)
            for model in 0..<modelCount {
                let w = weights[model], d = workspace.models[model]
                for j in 0..<count {
                    d[j] = w * d[j]
                    sum[j] = sum[j] + d[j]
                }
            }
            for model in 0..<modelCount {
                let w = weights[model], d = workspace.models[model]
                for j in 0..<count {
                    let agrees = sum[j] >= 0 ? d[j] > 0 : d[j] < 0
                    acc[j] = acc[j] + (agrees ? d[j] : 0)
                    div[j] = div[j] + (agrees ? w : 0)
                }
            }
            if parameters.normalize {
                for j in 0..<count { acc[j] = acc[j] / (div[j] == 0 ? 1 : div[j]) }
            }
        } else {
            acc.update(repeating: 0, count: count)
            for model in 0..<modelCount {
                let w = weights[model], tau = workspace.models[model]
                for j in 0..<count { acc[j] = acc[j] + w * tau[j] }
            }
            if parameters.normalize {
                let total = weights.reduce(Float(0)) { $0 + $1 }
                for j in 0..<count { acc[j] = acc[j] / total }
            }
        }
        let lambda = parameters.lambda, base = workspace.base
        for j in 0..<count { output[j] = base[j] + lambda * acc[j] }
    }

    /// linear: Σwᵢθᵢ, divided by Σwᵢ when normalising. The base model takes no part.
    private func combineLinear(count: Int, _ workspace: MergeWorkspace, _ output: UnsafeMutablePointer<Float>) {
        let acc = workspace.accumulator
        acc.update(repeating: 0, count: count)
        for model in 0..<modelCount {
            let theta = workspace.models[model], w = parameters.weights[model]
            for j in 0..<count { acc[j] = acc[j] + w * theta[j] }
        }
        let total = parameters.normalize ? parameters.weights.reduce(Float(0)) { $0 + $1 } : 1
        for j in 0..<count { output[j] = parameters.normalize ? acc[j] / total : acc[j] }
    }

    /// Zeroes the elements of τ that the method drops, rescaling DARE's survivors.
    private func sparsify(model: Int, range: Range<Int>, ties: Range<Int>, _ tau: UnsafeMutablePointer<Float>,
                          scratch: UnsafeMutablePointer<Float>) {
        let density = parameters.densities[model]
        switch method.sparsification {
        case .none:
            return
        case .magnitude:
            let threshold = thresholds[model]
            if threshold.keepAll { return }
            if threshold.keepNone { tau.update(repeating: 0, count: range.count); return }
            let bits = threshold.thresholdBits
            // Only the chunk where the kept ties run out needs the serial, counting loop; every other
            // chunk keeps all its ties (|τ| ≥ t) or none (|τ| > t), which are branch-free and vectorise.
            var lowest = bits
            if threshold.dropsSomeTies {
                if ties.lowerBound >= threshold.keptAtThreshold {
                    lowest = bits + 1
                } else if ties.upperBound > threshold.keptAtThreshold {
                    var equalSeen = ties.lowerBound
                    for j in 0..<range.count {
                        let magnitude = magnitudeBits(tau[j])
                        let keep = magnitude > bits || (magnitude == bits && equalSeen < threshold.keptAtThreshold)
                        equalSeen += magnitude == bits ? 1 : 0
                        tau[j] = keep ? tau[j] : 0
                    }
                    return
                }
            }
            for j in 0..<range.count { tau[j] = magnitudeBits(tau[j]) >= lowest ? tau[j] : 0 }
        case .random:
            guard density < 1 else { return }
            let mask = scratch
            dropout[model].fillMask(mask, elements: range, threshold: DropoutStream.keepThreshold(density: density))
            switch parameters.rescale {
            case .density:
                // (τ·m)/density, in that order, as the reference computes it.
                let d = Float(density)
                for j in 0..<range.count { tau[j] = (tau[j] * mask[j]) / d }
            case .l1, .none:
                let scale = parameters.rescale == .none ? 1 : dareScale[model]
                for j in 0..<range.count { tau[j] = (tau[j] * mask[j]) * scale }
            }
        }
    }
}
