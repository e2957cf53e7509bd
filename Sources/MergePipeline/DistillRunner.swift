// DistillRunner: connects the data-driven block mergers (ProDistill, RegMean) to the executor — which layers it trains, their weights, caches and statistics.
import Distillation
import Foundation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

/// The executor asks it, layer by layer, for trained or solved weights (blocks) and tells it when a layer is
/// written and journaled, so the activation cache advances and old files go only once safe.
final class DistillRunner {
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
