// ProDistill: progressive layer-wise distillation — per block, train element-wise coefficients against the teachers' outputs.
import FileIO
import Foundation
import MergeMethods
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

/// Per-layer results for the manifest: deterministic, so equal runs give equal manifests.
public struct DistillLayerStatistics: Codable, Sendable, Equatable {
    public var loss_before: Double
    public var loss_after: Double
    public var epochs: Int
    public var steps: Int
}

/// Per-layer timings and cache figures for the manifest's run section (they vary run to run).
public struct DistillLayerTiming: Codable, Sendable, Equatable {
    public var layer: String
    public var seconds: Double
    /// ProDistill: seconds of the training loop alone (forward, backward and Adam step per batch);
    /// `seconds` also counts the teachers' outputs, the losses before and after and the next layer's
    /// inputs. Absent for methods without a per-layer training loop.
    public var training_seconds: Double?
    /// Seconds spent compressing and decompressing the activation cache.
    public var cache_seconds: Double
    public var cache_raw_bytes: Int
    public var cache_stored_bytes: Int

    public init(layer: String, seconds: Double, training_seconds: Double? = nil, cache_seconds: Double, cache_raw_bytes: Int,
                cache_stored_bytes: Int) {
        self.layer = layer; self.seconds = seconds; self.training_seconds = training_seconds; self.cache_seconds = cache_seconds
        self.cache_raw_bytes = cache_raw_bytes; self.cache_stored_bytes = cache_stored_bytes
    }
}

/// Progress inside a block: (block, epoch, epochs, mean batch loss of the epoch).
public typealias DistillProgress = @Sendable (Int, Int, Int, Double) -> Void

/// Runs ProDistill (the paper's Algorithm 1; DESIGN.md §7) one block at a time.
///
/// Each calibration example carries z¹ (its activation in the merged model so far) and z² (in its own
/// task's fine-tune), both kept in the activation cache: for block l, files `L<l>-t<i>-merged.smac` and
/// `L<l>-t<i>-teacher.smac`, one chunk per batch. Training block l first writes the teachers' outputs
/// (block l+1's z², and block l's targets), then trains λ with fresh Adam, returns the merged weights;
/// `advance` then writes block l+1's z¹ through the merged block as it was written (rounded to the
/// output dtype), and the layer-l files can go.
public final class ProDistill {
    let settings: DistillSettings
    let architecture: Architecture
    let base: LayerReader
    let fineTunes: [LayerReader]
    let cache: CalibrationCache
    let outputDType: DType
    let threads: Int
    let seed: UInt64
    let lambda: Float

    public init(settings: DistillSettings, architecture: Architecture, base: LayerReader, fineTunes: [LayerReader],
                calibration: [[TokenizedExample]], calibrationPaths: [String], scratch: String, outputDType: DType,
                threads: Int, seed: UInt64) throws {
        self.settings = settings
        self.architecture = architecture
        self.base = base
        self.fineTunes = fineTunes
        self.outputDType = outputDType
        self.threads = threads
        self.seed = seed
        lambda = Float(settings.lambda(taskCount: fineTunes.count))
        cache = try CalibrationCache(settings: settings, architecture: architecture, calibration: calibration,
                                     calibrationPaths: calibrationPaths, scratch: scratch)
    }

    var taskCount: Int { fineTunes.count }
    var hidden: Int { architecture.config.hidden }
    var batches: [[TokenBatch]] { cache.batches }

    /// Whether block `layer`'s inputs (z¹ and z² of every task) are in the scratch directory.
    public func hasInputs(forBlock layer: Int) -> Bool { cache.exists(layer: layer, tasks: taskCount, ActivationPath.allCases) }

    /// Block 0's inputs: z¹ through the task-arithmetic embeddings (rounded as written), z² through
    /// each task's own embeddings.
    public func prepareEmbeddings() throws {
        let vectors = try TaskVectors(layer: .embeddings, base: base, fineTunes: fineTunes)
        let merged = roundedToOutput(vectors.taskArithmetic(lambda: lambda, threads: threads))
        for task in 0..<taskCount {
            try cache.writeEmbeddings(task: task, weights: merged, .merged)
            try cache.writeEmbeddings(task: task, weights: fineTunes[task].read(.embeddings), .teacher)
        }
    }

    /// The values the output will hold: rounded to the output dtype and back.
    func roundedToOutput(_ weights: LayerWeights) -> LayerWeights {
        guard outputDType != .f32 else { return weights }
        let bytes = UnsafeMutableRawPointer.allocate(byteCount: (weights.tensors.values.map(\.count).max() ?? 0) * 8, alignment: 64)
        defer { bytes.deallocate() }
        for tensor in weights.tensors.values {
            convertFromFloat(bytes, from: tensor.data, dtype: outputDType, count: tensor.count)
            convertToFloat(tensor.data, from: bytes, dtype: outputDType, count: tensor.count)
        }
        return weights
    }

    /// The real-token mask of a batch as f32 rows (all ones with include_padding).
    func rowMask(_ batch: TokenBatch) -> [Float] {
        settings.includePadding ? [Float](repeating: 1, count: batch.rows) : batch.attentionMask.map(Float.init)
    }

    /// The loss scale of one batch of `task` (see DistillSettings.LossReduction).
    func lossScale(_ batch: TokenBatch, task: Int) -> Float {
        switch settings.loss {
        case .sum: return 1 / Float(2 * taskCount * batches[task].reduce(0) { $0 + $1.B })
        case .mean: return 1 / (rowMask(batch).reduce(0, +) * Float(hidden))
        }
    }

    /// c·Σ mask·(out − target)² and, when `gradient` is given, ∂/∂out = 2c·mask·(out − target).
    func batchLoss(_ out: Tensor, target: Tensor, batch: TokenBatch, task: Int, gradient: Tensor?) -> Double {
        let scale = lossScale(batch, task: task), mask = rowMask(batch), H = hidden
        let target = target.data
        var total = 0.0
        for row in 0..<batch.rows {
            var rowSum: Float = 0
            for h in 0..<H {
                let d = (out.data[row * H + h] - target[row * H + h]) * mask[row]
                rowSum += d * d
                gradient?.data[row * H + h] = 2 * scale * d
            }
            total += Double(rowSum)
        }
        return total * Double(scale)
    }

    /// The order of all (task, batch) pairs in `epoch` of block `layer`: task-major, permuted by a
    /// Fisher–Yates shuffle driven by splitmix64 counters keyed by (seed, layer, epoch).
    public static func batchOrder(_ pairs: [(task: Int, batch: Int)], seed: UInt64, layer: Int, epoch: Int) -> [(task: Int, batch: Int)] {
        var order = pairs
        let key = splitMix64(splitMix64(seed) &+ (UInt64(layer) << 32) &+ UInt64(epoch))
        for j in stride(from: order.count - 1, to: 0, by: -1) {
            let k = Int(splitMix64(key &+ UInt64(j)) % UInt64(j + 1))
            order.swapAt(j, k)
        }
        return order
    }

    /// Trains block `layer` and returns its merged weights (local name → f32, rounded to the output
    /// dtype) with the layer's statistics.
    public func trainBlock(_ layer: Int, progress: DistillProgress? = nil) throws
        -> (weights: LayerWeights, statistics: DistillLayerStatistics, timing: DistillLayerTiming) {
        let started = Date()
        var figures = CacheFigures()
        // 1. Teachers' outputs: block l+1's z² and block l's targets.
        for task in 0..<taskCount {
            figures += try cache.propagate(architecture.block(fineTunes[task].read(.block(layer))), layer: layer, task: task, .teacher)
            for file in fineTunes[task].source.files { file.mapping.releaseAll() }
        }

        // 2. Fresh coefficients at λ₀ and fresh Adam.
        let tasks = try TaskVectors(layer: .block(layer), base: base, fineTunes: fineTunes)
        tasks.keepInMemoryIfSmall(threads: threads)
        let weights = tasks.taskArithmetic(lambda: lambda, threads: threads)
        let block = try architecture.block(weights)
        let gradients = weights.zerosLike()
        let optimizer: CoefficientOptimizer = settings.granularity == .element
            ? ElementwiseAdam(shapes: tasks.shapes, learningRate: settings.learningRate)
            : TensorwiseAdam(names: tasks.names, taskCount: taskCount, learningRate: settings.learningRate)
        let students = try (0..<taskCount).map { try cache.reader(layer: layer, task: $0, .merged) }
        let targets = try (0..<taskCount).map { try cache.reader(layer: layer + 1, task: $0, .teacher) }
        func fullLoss() throws -> Double {
            var total = 0.0
            for task in 0..<taskCount {
                for (number, batch) in batches[task].enumerated() {
                    let out = block.forward(try cache.load(students[task], task: task, batch: number), context: architecture.context(for: batch)).output
                    total += batchLoss(out, target: try cache.load(targets[task], task: task, batch: number), batch: batch, task: task, gradient: nil)
                }
            }
            return total
        }

        let lossBefore = try fullLoss()
        let pairs = (0..<taskCount).flatMap { task in batches[task].indices.map { (task: task, batch: $0) } }
        var steps = 0
        let trainingStarted = Date()
        for epoch in 0..<settings.epochs {
            var epochLoss = 0.0
            for (task, number) in Self.batchOrder(pairs, seed: seed, layer: layer, epoch: epoch) {
                let batch = batches[task][number]
                let context = architecture.context(for: batch)
                let tape = block.forward(try cache.load(students[task], task: task, batch: number), context: context)
                let dout = Tensor(shape: [batch.rows, hidden])
                epochLoss += batchLoss(tape.output, target: try cache.load(targets[task], task: task, batch: number), batch: batch, task: task, gradient: dout)
                for tensor in gradients.tensors.values { tensor.zero() }
                _ = block.backward(tape, dout: dout, gradients: gradients, context: context, inputGradient: false)
                optimizer.step(weights: weights, gradients: gradients, tasks: tasks, threads: threads)
                steps += 1
            }
            progress?(layer, epoch + 1, settings.epochs, epochLoss)
        }
        let trainingSeconds = Date().timeIntervalSince(trainingStarted)
        // The student as it will be written; the final loss is measured on exactly those weights.
        let merged = roundedToOutput(weights)
        let lossAfter = try fullLoss()
        figures.seconds += (students + targets).reduce(0) { $0 + $1.codecSeconds }
        return (merged, DistillLayerStatistics(loss_before: lossBefore, loss_after: lossAfter, epochs: settings.epochs, steps: steps),
                DistillLayerTiming(layer: LayerKey.block(layer).description, seconds: Date().timeIntervalSince(started),
                                   training_seconds: trainingSeconds, cache_seconds: figures.seconds, cache_raw_bytes: figures.raw, cache_stored_bytes: figures.stored))
    }

    /// Block l+1's z¹: the merged block (as written) applied to block l's z¹.
    public func advance(_ layer: Int, merged: LayerWeights) throws -> CacheFigures {
        let block = try architecture.block(merged)
        var figures = CacheFigures()
        for task in 0..<taskCount { figures += try cache.propagate(block, layer: layer, task: task, .merged) }
        return figures
    }

    /// Removes block `layer`'s inputs once block l+1's are safely in place.
    public func removeInputs(ofBlock layer: Int) { cache.remove(layer: layer, tasks: taskCount, ActivationPath.allCases) }
}

extension ProDistill {
    /// Peak bytes of ProDistill's own working set (the executor's buffers and the process come on
    /// top). The largest of its stages:
    /// - embeddings: the merged embedding tables and one teacher's, in f32, plus one batch's outputs;
    /// - a block: W, G and (element-wise) Adam's M and V, 4 bytes each per parameter — or a teacher's
    ///   f32 block before training — plus one batch's forward tape and backward temporaries
    ///   (≈ rows·(16·H + 4·I) floats and 2·heads·B·S² for the attention probabilities and their
    ///   gradient), plus per-thread task-vector chunks — or, for a block small enough, θ₀ and every τᵢ
    ///   kept in memory (TaskVectors.residentBudget).
    public static func estimatedPeakBytes(
        config: ArchitectureConfig, largestBlockParameters: Int, embeddingParameters: Int, tasks: Int,
        settings: DistillSettings, threads: Int
    ) -> Int {
        let rows = settings.batchSize * settings.maxLength
        let (H, I) = (config.hidden, config.intermediate)
        let tape = 4 * (rows * (16 * H + 4 * I) + 2 * config.heads * settings.batchSize * settings.maxLength * settings.maxLength)
        let activations = 4 * rows * H * 4
        let chunks = threads * (tasks + 1) * TaskVectors.chunkSize * 4
        let perParameter = settings.granularity == .element ? 16 : 8
        let taskVectors = TaskVectors.fitsInMemory(elements: largestBlockParameters, tasks: tasks)
            ? (tasks + 1) * largestBlockParameters * 4 : chunks
        let block = perParameter * largestBlockParameters + tape + activations + taskVectors
        let embeddings = 2 * 4 * embeddingParameters + activations + chunks
        return max(block, embeddings)
    }
}
