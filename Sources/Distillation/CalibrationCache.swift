// CalibrationCache: calibration batches and their per-block activation files, shared by the data-driven block mergers.
import Foundation
import ModelArchitectures
import TensorKernels

/// Which activation an example carries: through the merged model so far, or through its own fine-tune.
enum ActivationPath: String, Sendable, CaseIterable { case merged, teacher }

/// Codec seconds and bytes (raw, stored) spent on the cache, summed over files.
public struct CacheFigures: Sendable {
    public var seconds = 0.0, raw = 0, stored = 0

    static func += (a: inout CacheFigures, b: CacheFigures) {
        a.seconds += b.seconds; a.raw += b.raw; a.stored += b.stored
    }
}

/// Each task's calibration examples in batches (consecutive examples of one task, each batch padded
/// to its longest), and the scratch files `L<l>-t<i>-<path>.smac` holding one chunk per batch.
final class CalibrationCache {
    let architecture: Architecture
    let batches: [[TokenBatch]]
    let scratch: String
    let dtype: ActivationDType

    init(settings: DistillSettings, architecture: Architecture, calibration: [[TokenizedExample]],
         calibrationPaths: [String], scratch: String) throws {
        self.architecture = architecture
        self.scratch = scratch
        dtype = settings.activationDType
        batches = try Self.batches(calibration, settings: settings, architecture: architecture, paths: calibrationPaths)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    }

    /// Each task's examples in consecutive batches of `batch_size`, each padded to its longest (at
    /// most `max_length` tokens), checked against the model; a task without examples is an error.
    static func batches(_ calibration: [[TokenizedExample]], settings: DistillSettings, architecture: Architecture,
                        paths: [String]) throws -> [[TokenBatch]] {
        let pad = Int32(architecture.config.padTokenID)
        return try zip(calibration, paths).map { examples, path in
            guard !examples.isEmpty else { throw ArchitectureError.badInput(path: path, detail: "no calibration examples") }
            return try stride(from: 0, to: examples.count, by: settings.batchSize).map {
                let batch = TokenBatch(Array(examples[$0..<min(examples.count, $0 + settings.batchSize)]), padID: pad, maxLength: settings.maxLength)
                try architecture.validate(batch, origin: path)
                return batch
            }
        }
    }

    var hidden: Int { architecture.config.hidden }

    func path(layer: Int, task: Int, _ path: ActivationPath) -> String { scratch + "/L\(layer)-t\(task)-\(path.rawValue).smac" }

    func exists(layer: Int, tasks: Int, _ paths: [ActivationPath]) -> Bool {
        (0..<tasks).allSatisfy { task in paths.allSatisfy { FileManager.default.fileExists(atPath: path(layer: layer, task: task, $0)) } }
    }

    func remove(layer: Int, tasks: Int, _ paths: [ActivationPath]) {
        for task in 0..<tasks {
            for p in paths { try? FileManager.default.removeItem(atPath: path(layer: layer, task: task, p)) }
        }
    }

    func reader(layer: Int, task: Int, _ p: ActivationPath) throws -> ActivationCacheReader {
        try ActivationCacheReader(path: path(layer: layer, task: task, p))
    }

    /// Batch `number` of `task` from `reader`, as [rows, hidden].
    func load(_ reader: ActivationCacheReader, task: Int, batch number: Int) throws -> Tensor {
        let t = Tensor(shape: [batches[task][number].rows, hidden])
        try reader.read(chunk: number, into: t.data)
        return t
    }

    /// Writes block 0's input file for `task`: the embeddings output of every batch through `weights`.
    func writeEmbeddings(task: Int, weights: LayerWeights, _ p: ActivationPath) throws {
        let output = try writer(layer: 0, task: task, p)
        for batch in batches[task] {
            let z = try architecture.embed(batch, weights: weights)
            try output.append(z.data, count: z.count)
        }
        try output.finish()
    }

    /// Runs `block` over `task`'s batches from layer `layer`'s `p` file into layer l+1's, calling
    /// `observe` with each batch's tape (RegMean reads the linear layers' inputs from it).
    @discardableResult
    func propagate(_ block: TransformerBlock, layer: Int, task: Int, _ p: ActivationPath,
                   observe: ((BlockTape, TokenBatch) throws -> Void)? = nil) throws -> CacheFigures {
        let input = try reader(layer: layer, task: task, p)
        let output = try writer(layer: layer + 1, task: task, p)
        for (number, batch) in batches[task].enumerated() {
            let tape = block.forward(try load(input, task: task, batch: number), context: architecture.context(for: batch))
            try output.append(tape.output.data, count: tape.output.count)
            try observe?(tape, batch)
        }
        try output.finish()
        return CacheFigures(seconds: input.codecSeconds + output.codecSeconds, raw: output.rawBytes, stored: output.storedBytes)
    }

    private func writer(layer: Int, task: Int, _ p: ActivationPath) throws -> ActivationCacheWriter {
        try ActivationCacheWriter(path: path(layer: layer, task: task, p), dtype: dtype,
                                  exampleCount: batches[task].reduce(0) { $0 + $1.B }, rowShape: [hidden])
    }
}
