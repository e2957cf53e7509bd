// DistillRunner: connects the data-driven methods to the executor — block mergers (ProDistill, RegMean) and end-to-end training (SAMerging, AdaMerging).
import Distillation
import Foundation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

/// What the executor asks of a data-driven method, layer by layer: trained or solved weights, and
/// notices when a layer is written and when it is journaled.
protocol DataDrivenRunner: AnyObject {
    var statistics: [String: DistillLayerStatistics] { get }
    var timings: [DistillLayerTiming] { get }
    /// End-to-end methods: their training figures for the manifest.
    var training: EndToEndStatistics? { get }
    /// The f32 values of `layer`'s tensors by canonical name, or nil for layers merged data-free.
    func trainedTensors(_ layer: LayerKey) throws -> [String: Tensor]?
    func layerWritten(_ layer: LayerKey) throws
    func layerCommitted(_ layer: LayerKey)
}

/// The runner for `plan`'s method, resuming from the journal's figures.
func makeDataDrivenRunner(plan: MergePlan, settings: DistillSettings, scratch: String, threads: Int, journal: Journal,
                          options: MergeOptions) throws -> DataDrivenRunner {
    // The run's --threads bounds the kernels' own loops and OpenBLAS alike.
    setKernelThreads(threads)
    if let method = EndToEndMerge.Method(rawValue: plan.config.methodName) {
        return try EndToEndRunner(plan: plan, method: method, settings: settings, scratch: scratch, threads: threads,
                                  progress: options.trainingProgress)
    }
    return try DistillRunner(plan: plan, settings: settings, scratch: scratch, threads: threads,
                             previous: journal.layer_statistics ?? [:], previousTimings: journal.layer_timings ?? [],
                             progress: options.distillProgress)
}

/// The executor asks it, layer by layer, for trained or solved weights (blocks) and tells it when a layer is
/// written and journaled, so the activation cache advances and old files go only once safe.
final class DistillRunner: DataDrivenRunner {
    let distill: BlockMerger
    let baseReader: LayerReader
    let scratch: String
    /// Weights of the block being written, kept until its successor's inputs are computed.
    private var current: (layer: Int, weights: LayerWeights)?
    private(set) var statistics: [String: DistillLayerStatistics]
    private(set) var timings: [DistillLayerTiming]

    init(plan: MergePlan, settings: DistillSettings, scratch: String, threads: Int,
         previous: [String: DistillLayerStatistics], previousTimings: [DistillLayerTiming], progress: DistillProgress?) throws {
        guard let base = plan.base else { throw MergeError.config(path: plan.config.path, detail: "prodistill needs 'base_model'") }
        let architecture = try Architecture(source: base)
        let calibration = plan.config.models.map { $0.calibration! }
        baseReader = LayerReader(source: base)
        let fineTunes = plan.models.map { LayerReader(source: $0) }
        let examples = try calibration.map { try TokenizedExample.readJSONL($0) }
        if plan.config.methodName == "regmean" {
            distill = try RegMean(settings: settings, architecture: architecture, fineTunes: fineTunes,
                                  calibration: examples, calibrationPaths: calibration, scratch: scratch)
        } else {
            distill = try ProDistill(
                settings: settings, architecture: architecture, base: baseReader, fineTunes: fineTunes,
                calibration: examples, calibrationPaths: calibration,
                scratch: scratch, outputDType: plan.config.outputDType ?? .f32, threads: threads, seed: plan.config.seed)
        }
        self.scratch = scratch
        statistics = previous
        timings = previousTimings
        self.progress = progress
    }

    let progress: DistillProgress?
    var training: EndToEndStatistics? { nil }

    /// The trained f32 values of `layer`'s tensors by canonical name, or nil for layers merged data-free.
    func trainedTensors(_ layer: LayerKey) throws -> [String: Tensor]? {
        guard case let .block(index) = layer else { return nil }
        if !distill.hasInputs(forBlock: index) {
            guard index == 0 else {
                throw MergeError.resume(path: scratch, detail: "the activation cache for block \(index) is missing; start the merge again")
            }
            try distill.prepareEmbeddings()
        }
        let (weights, stats, timing) = try distill.mergeBlock(index, progress: progress)
        current = (index, weights)
        if let stats { statistics[layer.description] = stats }
        timings.removeAll { $0.layer == timing.layer }
        timings.append(timing)
        var byCanonical: [String: Tensor] = [:]
        for (local, tensor) in weights.tensors {
            byCanonical[baseReader.naming.canonical(baseReader.layerTensors[layer]![local]!)] = tensor
        }
        return byCanonical
    }

    /// After a trained block is written: compute the next block's merged-path inputs.
    func layerWritten(_ layer: LayerKey) throws {
        guard case let .block(index) = layer, let current, current.layer == index else { return }
        let codec = try distill.advance(index, merged: current.weights)
        timings[timings.count - 1].cache_seconds += codec.seconds
        timings[timings.count - 1].cache_raw_bytes += codec.raw
        timings[timings.count - 1].cache_stored_bytes += codec.stored
    }

    /// After the journal records the block: its inputs are no longer needed.
    func layerCommitted(_ layer: LayerKey) {
        guard case let .block(index) = layer else { return }
        distill.removeInputs(ofBlock: index)
        current = nil
    }
}

/// SAMerging and AdaMerging: all coefficients are trained before the first layer is written (from
/// the checkpoint in the scratch directory when resuming); then every layer is merged at them.
final class EndToEndRunner: DataDrivenRunner {
    let merge: EndToEndMerge
    let values: [Double]
    let threads: Int
    let training: EndToEndStatistics?
    let timings: [DistillLayerTiming]
    var statistics: [String: DistillLayerStatistics] { [:] }

    init(plan: MergePlan, method: EndToEndMerge.Method, settings: DistillSettings, scratch: String, threads: Int,
         progress: TrainingProgress?) throws {
        guard let base = plan.base else { throw MergeError.config(path: plan.config.path, detail: "\(method.rawValue) needs 'base_model'") }
        let architecture = try Architecture(source: base)
        let calibration = plan.config.models.map { $0.calibration! }
        let examples = try calibration.map { try TokenizedExample.readJSONL($0) }
        merge = try EndToEndMerge(
            method: method, settings: settings, architecture: architecture, base: LayerReader(source: base),
            fineTunes: plan.models.map { LayerReader(source: $0) }, heads: try taskHeads(plan, architecture: architecture),
            calibration: examples, calibrationPaths: calibration, scratch: scratch, threads: threads, seed: plan.config.seed)
        self.threads = threads
        let started = Date()
        // After an interruption, training continues from its checkpoint (or, if it had finished, returns at once).
        (values, training) = try merge.train(checkpoint: scratch + "/coefficients.json", progress: progress)
        timings = [DistillLayerTiming(layer: "model", seconds: Date().timeIntervalSince(started), cache_seconds: merge.codecSeconds,
                                      cache_raw_bytes: 0, cache_stored_bytes: 0)]
    }

    func trainedTensors(_ layer: LayerKey) throws -> [String: Tensor]? {
        let weights = try merge.coefficients.merged(layer, values: values, threads: threads)
        var byCanonical: [String: Tensor] = [:]
        for key in merge.coefficients.keys where key.layer == layer {
            byCanonical[merge.coefficients.naming.canonical(key.stored)] = weights[key.local]
        }
        return byCanonical
    }

    func layerWritten(_ layer: LayerKey) throws {}
    func layerCommitted(_ layer: LayerKey) {}
}

/// Encoders' task heads: a model's `head:` file, else its own task-specific tensors (a classifier);
/// nil for decoders, whose LM head belongs to the merged model.
private func taskHeads(_ plan: MergePlan, architecture: Architecture) throws -> [LinearHead]? {
    guard architecture.config.family == .bert else { return nil }
    return try plan.config.models.enumerated().map { index, entry in
        if let path = entry.head { return try LinearHead(file: SafetensorsFile(path: path), hidden: architecture.config.hidden) }
        guard let own = plan.heads.first(where: { $0.modelIndex == index }) else {
            throw MergeError.config(path: plan.config.path, detail: "models[\(index)] (\(entry.path)) needs 'head': a safetensors file with weight [classes, hidden] and bias [classes], as it has no classification tensors of its own")
        }
        return try LinearHead(source: plan.models[index], names: own.names, hidden: architecture.config.hidden)
    }
}
