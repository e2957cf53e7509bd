// TaskVectors: one block's base and fine-tuned tensors, read from the mapped inputs in chunks as f32 task vectors.
import Dispatch
import Foundation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

/// Where each tensor of one layer lives in the base and in every fine-tune. By default task vectors
/// τᵢ = θᵢ − θ₀ are not stored: each pass recomputes the chunk it needs from the mapped files (bf16
/// or f32), so memory holds one chunk per thread instead of T copies of the layer. A layer small
/// enough (`residentBudget`) can be kept in memory instead (`keepInMemoryIfSmall`): then the many passes of
/// a block's training read f32 copies instead of converting and page-faulting the mapping each step.
public final class TaskVectors: @unchecked Sendable {
    public let names: [String]
    public let shapes: [String: [Int]]
    let base: [String: (SafetensorsFile, TensorInfo)]
    let tasks: [[String: (SafetensorsFile, TensorInfo)]]
    /// Per tensor, θ₀ then τ₁ … τ_T as f32, each `count` long, once `keepInMemory` ran.
    private var resident: [String: UnsafeMutablePointer<Float>] = [:]
    public static let chunkSize = 1 << 16
    /// The most bytes `keepInMemory` may hold: 256 MiB, a small model's block (all-MiniLM-L6-v2's
    /// with 6 tasks is 49 MB); a 1B-class model's block with 3 tasks is far past it and streams.
    public static let residentBudget = 256 << 20

    /// The floating-point tensors of `layer` in `base` and `fineTunes`, matched by local name.
    public init(layer: LayerKey, base: LayerReader, fineTunes: [LayerReader]) throws(ArchitectureError) {
        func entries(_ reader: LayerReader) -> [String: (SafetensorsFile, TensorInfo)] {
            (reader.layerTensors[layer] ?? [:]).reduce(into: [:]) { result, pair in
                let (file, info) = reader.source.tensor(pair.value)!
                if info.dtype.isFloatingPoint { result[pair.key] = (file, info) }
            }
        }
        self.base = entries(base)
        tasks = fineTunes.map(entries)
        names = self.base.keys.sorted()
        shapes = self.base.mapValues { $0.1.shape }
        for (number, task) in tasks.enumerated() {
            for name in names where task[name]?.1.shape != shapes[name] {
                throw .missingTensor(path: fineTunes[number].source.path, tensor: "\(layer) \(name)")
            }
        }
    }

    deinit { for buffer in resident.values { buffer.deallocate() } }

    public var taskCount: Int { tasks.count }

    /// Whether a layer of `elements` floating-point elements with `tasks` fine-tunes fits
    /// `residentBudget` as θ₀ and every τᵢ in f32 (what `keepInMemoryIfSmall` holds).
    public static func fitsInMemory(elements: Int, tasks: Int) -> Bool { (tasks + 1) * elements * 4 <= residentBudget }

    /// Keeps the layer in memory (`keepInMemory`) when it fits `residentBudget`.
    public func keepInMemoryIfSmall(threads: Int) {
        if Self.fitsInMemory(elements: names.reduce(0) { $0 + base[$1]!.1.elementCount }, tasks: taskCount) {
            keepInMemory(threads: threads)
        }
    }

    /// Reads θ₀ and computes every τᵢ once into f32 buffers, which later passes use instead of the
    /// mapped files; the mapped pages are released as they are read.
    public func keepInMemory(threads: Int) {
        let buffers = Dictionary(uniqueKeysWithValues: names.map { name in
            (name, UnsafeMutablePointer<Float>.allocate(capacity: (taskCount + 1) * base[name]!.1.elementCount))
        })
        forEachChunk(threads: threads) { name, elements, theta, taus in
            let count = base[name]!.1.elementCount, buffer = buffers[name]! + elements.lowerBound
            buffer.update(from: theta, count: elements.count)
            for (t, tau) in taus.enumerated() { (buffer + (t + 1) * count).update(from: tau, count: elements.count) }
        }
        resident = buffers
    }

    /// Calls `body(name, elements, base, τ)` for every chunk of every tensor, spread over `threads`;
    /// `base` and each τᵢ hold the chunk's elements as f32. Chunks are fixed (not per thread), so
    /// any per-chunk reduction combined in chunk order is independent of the thread count.
    /// `skip(name, elements)` true leaves a chunk out without reading it.
    public func forEachChunk(
        threads: Int, skip: ((_ name: String, _ elements: Range<Int>) -> Bool)? = nil,
        _ body: (_ name: String, _ elements: Range<Int>, _ base: UnsafePointer<Float>, _ tasks: [UnsafePointer<Float>]) -> Void
    ) {
        var work: [(name: String, elements: Range<Int>)] = []
        for name in names {
            let count = base[name]!.1.elementCount
            for start in stride(from: 0, to: count, by: Self.chunkSize) {
                let elements = start..<min(count, start + Self.chunkSize)
                if skip?(name, elements) != true { work.append((name, elements)) }
            }
        }
        let T = tasks.count
        let workers = max(1, min(threads, work.count))
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            // Kept in memory, a chunk is a view into the resident copies; otherwise it is read and
            // converted into this worker's scratch.
            let scratch = resident.isEmpty ? UnsafeMutablePointer<Float>.allocate(capacity: (T + 1) * Self.chunkSize) : nil
            defer { scratch?.deallocate() }
            for index in stride(from: worker, to: work.count, by: workers) {
                let (name, elements) = work[index]
                guard let scratch else {
                    let buffer = resident[name]! + elements.lowerBound, count = base[name]!.1.elementCount
                    body(name, elements, buffer, (1..<T + 1).map { UnsafePointer(buffer + $0 * count) })
                    continue
                }
                let (baseFile, baseInfo) = base[name]!
                baseFile.readFloats(baseInfo, elements: elements, into: scratch)
                var taus: [UnsafePointer<Float>] = []
                for t in 0..<T {
                    let tau = scratch + (t + 1) * Self.chunkSize
                    let (file, info) = tasks[t][name]!
                    file.readFloats(info, elements: elements, into: tau)
                    for j in 0..<elements.count { tau[j] = tau[j] - scratch[j] }
                    taus.append(UnsafePointer(tau))
                }
                body(name, elements, scratch, taus)
                // Mapped pages count in RSS: drop the chunk's pages now (they stay in the page cache,
                // so the next step's reads are minor faults, not disk reads).
                baseFile.mapping.releaseCovering(baseFile.fileRange(of: baseInfo, elements: elements))
                for t in 0..<T {
                    let (file, info) = tasks[t][name]!
                    file.mapping.releaseCovering(file.fileRange(of: info, elements: elements))
                }
            }
        }
    }

    /// ⟨G, τᵢ⟩ for every tensor and task: summed in double per fixed chunk, then in chunk order, so
    /// the thread count does not change the result. Chunks where G is zero are not read (an
    /// embedding table's gradient touches only the rows of the tokens seen).
    public func dotProducts(_ gradients: LayerWeights, threads: Int) -> [String: [Double]] {
        let lock = NSLock()
        var partials: [String: [Int: [Double]]] = [:]
        let isZero: (String, Range<Int>) -> Bool = { name, elements in
            let g = gradients[name]!.data
            return !elements.contains { g[$0] != 0 }
        }
        forEachChunk(threads: threads, skip: isZero) { name, elements, _, taus in
            let g = gradients[name]!.data + elements.lowerBound
            let sums = taus.map { tau in (0..<elements.count).reduce(0.0) { $0 + Double(g[$1]) * Double(tau[$1]) } }
            lock.withLock { partials[name, default: [:]][elements.lowerBound] = sums }
        }
        return Dictionary(uniqueKeysWithValues: names.map { name in
            var total = [Double](repeating: 0, count: taskCount)
            for (_, sums) in (partials[name] ?? [:]).sorted(by: { $0.key < $1.key }) { for i in 0..<taskCount { total[i] += sums[i] } }
            return (name, total)
        })
    }

    /// θ₀ + Σᵢ λᵢ·τᵢ with one coefficient per tensor and task (`lambdas[name][i]`), tasks added in order.
    public func merged(lambdas: [String: [Float]], threads: Int) -> LayerWeights {
        let tensors = Dictionary(uniqueKeysWithValues: names.map { ($0, Tensor(shape: shapes[$0]!)) })
        forEachChunk(threads: threads) { name, elements, base, taus in
            let out = tensors[name]!.data + elements.lowerBound, lambda = lambdas[name]!
            for j in 0..<elements.count {
                var w = base[j]
                for (i, tau) in taus.enumerated() { w += lambda[i] * tau[j] }
                out[j] = w
            }
        }
        return LayerWeights(tensors: tensors, origin: "merged by coefficients")
    }

    /// θ₀ + λ·Στᵢ for every tensor, as the data-free task-arithmetic merge computes it (the same f32
    /// operations in the same order, so the result equals what a task_arithmetic merge writes).
    public func taskArithmetic(lambda: Float, threads: Int) -> LayerWeights {
        let tensors = Dictionary(uniqueKeysWithValues: names.map { ($0, Tensor(shape: shapes[$0]!)) })
        forEachChunk(threads: threads) { name, elements, base, taus in
            let out = tensors[name]!.data + elements.lowerBound
            for j in 0..<elements.count {
                var acc: Float = 0
                for tau in taus { acc = acc + 1 * tau[j] }
                out[j] = base[j] + lambda * acc
            }
        }
        return LayerWeights(tensors: tensors, origin: "task arithmetic")
    }
}
