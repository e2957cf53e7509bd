// TensorMerger: merges one tensor chunk by chunk, so memory is bounded by the chunk size, not the tensor.
import Dispatch

/// Reads elements `elements` of a model's tensor as f32 into the buffer; `model` nil is the base.
/// The reader is expected to release the source pages it has converted.
public typealias ChunkReader = @Sendable (_ model: Int?, _ elements: Range<Int>, _ into: UnsafeMutablePointer<Float>) -> Void

/// Per-thread scratch: one chunk of the base, of each fine-tune, and of a running sum.
public final class MergeWorkspace: @unchecked Sendable {
    let base: UnsafeMutablePointer<Float>
    let models: [UnsafeMutablePointer<Float>]
    let accumulator: UnsafeMutablePointer<Float>
    let divisor: UnsafeMutablePointer<Float>
    let chunkSize: Int

    public init(modelCount: Int, chunkSize: Int) {
        self.chunkSize = chunkSize
        base = .allocate(capacity: chunkSize)
        models = (0..<modelCount).map { _ in .allocate(capacity: chunkSize) }
        accumulator = .allocate(capacity: chunkSize)
        divisor = .allocate(capacity: chunkSize)
    }

    deinit {
        base.deallocate()
        models.forEach { $0.deallocate() }
        accumulator.deallocate()
        divisor.deallocate()
    }

    /// Bytes held, for memory estimates.
    public static func byteCount(modelCount: Int, chunkSize: Int) -> Int { (modelCount + 3) * chunkSize * 4 }
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
/// DARE's L1 norms); `merge(chunk:)` then produces any chunk independently.
public final class TensorMerger: @unchecked Sendable {
    public let method: MergeMethod
    public let parameters: TensorMergeParameters
    public let elementCount: Int
    public let chunkSize: Int
    let read: ChunkReader
    let modelCount: Int
    let dropout: [DropoutStream]
    var thresholds: [MagnitudeThreshold]
    /// Per fine-tune multiplier applied to kept DARE elements.
    var dareScale: [Float]

    public init(method: MergeMethod, parameters: TensorMergeParameters, elementCount: Int, canonicalName: String,
                seed: UInt64, chunkSize: Int, read: @escaping ChunkReader) {
        self.method = method
        self.parameters = parameters
        self.elementCount = elementCount
        self.chunkSize = chunkSize
        self.read = read
        modelCount = parameters.weights.count
        dropout = (0..<parameters.weights.count).map { DropoutStream(seed: seed, tensorName: canonicalName, modelIndex: $0) }
        thresholds = Array(repeating: .keepEverything, count: parameters.weights.count)
        dareScale = parameters.densities.map { $0 >= 1 ? 1 : Float(1 / $0) }
    }

    public var chunkCount: Int { (elementCount + chunkSize - 1) / chunkSize }

    func elements(ofChunk chunk: Int) -> Range<Int> {
        (chunk * chunkSize)..<min(elementCount, (chunk + 1) * chunkSize)
    }

    /// Whether `prepare` will read the inputs (so callers can account for the extra passes).
    public var needsPreparation: Bool {
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
        let workers = workspaces.count
        let targets: [Int] = parameters.densities.map { $0 >= 1 ? -1 : Int($0 * Double(elementCount)) }

        // Pass 1: histogram of the high 16 bits of |τ| per fine-tune.
        var high = Array(repeating: Array(repeating: Histogram16(), count: modelCount), count: workers)
        high.withUnsafeMutableBufferPointer { perWorker in
            forEachChunk(chunkCount, threads: min(threads, workers)) { worker, chunk in
                let range = loadTaskVectors(chunk: chunk, workspaces[worker])
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
        var needsEqualCounts = false
        for model in 0..<modelCount {
            if targets[model] < 0 { thresholds[model] = .keepEverything; continue }
            if targets[model] == 0 {
                thresholds[model] = MagnitudeThreshold(thresholdBits: 0, keptAtThreshold: 0, equalBeforeChunk: nil, keepAll: false, keepNone: true)
                continue
            }
            var total = Histogram16()
            for worker in 0..<workers { total.add(low[worker][model]) }
            let (lowBin, aboveLow) = total.binHolding(rank: targets[model] - aboveHigh[model])
            let kept = targets[model] - aboveHigh[model] - aboveLow
            let dropsSome = kept < total.counts[lowBin]
            needsEqualCounts = needsEqualCounts || dropsSome
            thresholds[model] = MagnitudeThreshold(
                thresholdBits: UInt32(highBin[model]) << 16 | UInt32(lowBin), keptAtThreshold: kept,
                equalBeforeChunk: dropsSome ? [] : nil, keepAll: false, keepNone: false)
        }
        guard needsEqualCounts else { return }

        // Pass 3, only when the k-th magnitude is tied and some of the ties are dropped: count the
        // tied elements per chunk so each chunk knows how many came before it in index order.
        var equalPerChunk = Array(repeating: [Int](repeating: 0, count: chunkCount), count: modelCount)
        equalPerChunk.withUnsafeMutableBufferPointer { perModel in
            forEachChunk(chunkCount, threads: min(threads, workers)) { worker, chunk in
                let range = loadTaskVectors(chunk: chunk, workspaces[worker])
                for model in 0..<modelCount where thresholds[model].equalBeforeChunk != nil {
                    let tau = workspaces[worker].models[model]
                    let threshold = thresholds[model].thresholdBits
                    var count = 0
                    for j in 0..<range.count where magnitudeBits(tau[j]) == threshold { count += 1 }
                    perModel[model][chunk] = count
                }
            }
        }
        for model in 0..<modelCount where thresholds[model].equalBeforeChunk != nil {
            var running = 0
            thresholds[model].equalBeforeChunk = equalPerChunk[model].map { count in
                defer { running += count }
                return running
            }
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
                for model in 0..<modelCount where parameters.densities[model] < 1 {
                    let tau = workspaces[worker].models[model]
                    var full = 0.0, kept = 0.0
                    for j in 0..<range.count {
                        let magnitude = Double(abs(tau[j]))
                        full += magnitude
                        if dropout[model].keeps(range.lowerBound + j, density: parameters.densities[model]) { kept += magnitude }
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

    // MARK: - Merging a chunk

    /// Writes the merged f32 values of `chunk` to `output` (chunk-sized).
    public func merge(chunk: Int, workspace: MergeWorkspace, into output: UnsafeMutablePointer<Float>) {
        if method == .linear { return mergeLinear(chunk: chunk, workspace, output) }
        let range = loadTaskVectors(chunk: chunk, workspace)
        let count = range.count
        for model in 0..<modelCount { sparsify(model: model, chunk: chunk, range: range, workspace.models[model]) }
        let weights = parameters.weights
        let acc = workspace.accumulator
        let div = workspace.divisor
        if method.electsSign {
            // dᵢ = wᵢ·τ̂ᵢ; the majority sign is the sign of Σdᵢ (≥ 0 → +); only agreeing dᵢ are summed.
            for model in 0..<modelCount {
                let w = weights[model], tau = workspace.models[model]
                for j in 0..<count { tau[j] = w * tau[j] }
            }
            for j in 0..<count {
                var sum: Float = 0
                for model in 0..<modelCount { sum = sum + workspace.models[model][j] }
                let positive = sum >= 0
                var mixed: Float = 0, weightSum: Float = 0
                for model in 0..<modelCount {
                    let d = workspace.models[model][j]
                    if positive ? d > 0 : d < 0 {
                        mixed = mixed + d
                        weightSum = weightSum + weights[model]
                    } else {
                        mixed = mixed + 0
                        weightSum = weightSum + 0
                    }
                }
                acc[j] = mixed
                div[j] = weightSum == 0 ? 1 : weightSum
            }
            if parameters.normalize { for j in 0..<count { acc[j] = acc[j] / div[j] } }
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
    private func mergeLinear(chunk: Int, _ workspace: MergeWorkspace, _ output: UnsafeMutablePointer<Float>) {
        let range = elements(ofChunk: chunk)
        let acc = workspace.accumulator
        acc.update(repeating: 0, count: range.count)
        for model in 0..<modelCount {
            let theta = workspace.models[model], w = parameters.weights[model]
            read(model, range, theta)
            for j in 0..<range.count { acc[j] = acc[j] + w * theta[j] }
        }
        let total = parameters.normalize ? parameters.weights.reduce(Float(0)) { $0 + $1 } : 1
        for j in 0..<range.count { output[j] = parameters.normalize ? acc[j] / total : acc[j] }
    }

    /// Zeroes the elements of τ that the method drops, rescaling DARE's survivors.
    private func sparsify(model: Int, chunk: Int, range: Range<Int>, _ tau: UnsafeMutablePointer<Float>) {
        let density = parameters.densities[model]
        switch method.sparsification {
        case .none:
            return
        case .magnitude:
            let threshold = thresholds[model]
            if threshold.keepAll { return }
            if threshold.keepNone { tau.update(repeating: 0, count: range.count); return }
            let bits = threshold.thresholdBits
            var equalSeen = threshold.equalBeforeChunk?[chunk] ?? 0
            let keepAllEqual = threshold.equalBeforeChunk == nil
            for j in 0..<range.count {
                let magnitude = magnitudeBits(tau[j])
                if magnitude > bits { continue }
                if magnitude == bits {
                    if keepAllEqual || equalSeen < threshold.keptAtThreshold { equalSeen += 1; continue }
                    equalSeen += 1
                }
                tau[j] = 0
            }
        case .random:
            guard density < 1 else { return }
            let stream = dropout[model]
            switch parameters.rescale {
            case .density:
                // (τ·m)/density, in that order, as the reference computes it.
                let d = Float(density)
                for j in 0..<range.count {
                    let mask: Float = stream.keeps(range.lowerBound + j, density: density) ? 1 : 0
                    tau[j] = (tau[j] * mask) / d
                }
            case .l1, .none:
                let scale = parameters.rescale == .none ? 1 : dareScale[model]
                for j in 0..<range.count {
                    let mask: Float = stream.keeps(range.lowerBound + j, density: density) ? 1 : 0
                    tau[j] = (tau[j] * mask) * scale
                }
            }
        }
    }
}
