// MergePlan: everything decided from headers alone — matched tensors, layers, parameters, shards, heads, memory.
import Distillation
import FileIO
import Foundation
import MergeMethods
import ModelArchitectures
import SafetensorsFormat

/// One output tensor and where its inputs live.
public struct PlannedTensor: Sendable {
    /// Name as the base model stores it; used in the output.
    public let name: String
    public let canonicalName: String
    public let layer: LayerKey
    public let shape: [Int]
    public let inputDType: DType
    public let outputDType: DType
    /// Merge parameters; nil for integer/bool tensors, which are copied from the base unchanged.
    public let parameters: TensorMergeParameters?
    /// Stored names in the base (nil for linear without a base) and in each fine-tune.
    public let baseName: String?
    public let modelNames: [String]

    public var elementCount: Int { shape.reduce(1, *) }
    public var outputSpec: TensorSpec { TensorSpec(name: name, dtype: outputDType, shape: shape) }
}

/// An output shard: its file name and the tensors it holds, in plan order.
public struct PlannedShard: Sendable {
    public let fileName: String
    public let tensors: Range<Int>
    public let layout: SafetensorsLayout
}

/// Tensors a fine-tune has and the base lacks (e.g. a classification head), kept per model.
public struct PlannedHead: Sendable {
    public let modelIndex: Int
    public let fileName: String
    public let names: [String]
}

public struct MergePlan: @unchecked Sendable {
    public let config: MergeConfig
    public let base: ModelSource?
    public let models: [ModelSource]
    public let tensors: [PlannedTensor]
    /// Layers in streaming order with the plan-tensor indices each holds.
    public let layers: [(key: LayerKey, tensors: Range<Int>)]
    public let shards: [PlannedShard]
    public let heads: [PlannedHead]
    public let chunkSize: Int

    public static let defaultShardSize = 5_000_000_000
    /// 64 Ki elements: the unit handed to a worker, read with `pread` and written in order (workers
    /// compute inside it in cache-sized blocks, `MergeWorkspace.defaultBlockSize`). A chunk of four
    /// bf16 inputs (512 KiB) stays in a core's 1 MiB L2 between its reads and its conversion; at 128
    /// Ki it spilled, and the merges took 7–12 % more time. Outputs do not depend on it.
    public static let defaultChunkSize = 1 << 16

    /// Chunks merged per window: several per worker, so that the barrier at each window's end (the
    /// chunks are written in order) rarely leaves a worker idle.
    public static func windowChunks(workers: Int) -> Int { 8 * workers }

    /// Largest tensor, its inputs' bytes together, that a method reading it twice reads through the
    /// mapping (see `InputWindow`): the most mapped input pages held at once.
    public static let defaultMappedTensorBytes = 128 << 20

    /// Windows of converted output in flight: one being merged and up to three queued for the writer,
    /// so that a write held up now and then (a page-cache allocation, a busy core) does not stall the workers.
    public static let outputWindows = 4

    /// Opens every input (headers only: tensor data is mapped, not read) and plans the merge.
    /// - Throws: `SafetensorsError` or `MergeError` naming the file and tensor at fault.
    public init(config: MergeConfig, shardSize: Int? = nil, chunkSize: Int = MergePlan.defaultChunkSize) throws {
        self.config = config
        self.chunkSize = chunkSize
        let base = try config.basePath.map { try ModelSource(path: $0) }
        let models = try config.models.map { try ModelSource(path: $0.path) }
        self.base = base
        self.models = models
        let reference = base ?? models[0]
        let naming = TensorNaming(modelType: reference.modelType ?? models.lazy.compactMap(\.modelType).first)
        let referenceLabel = reference.path

        // Canonical name → stored name, per model; two stored names may not collapse into one.
        func canonicalMap(_ source: ModelSource) throws -> [String: String] {
            var map: [String: String] = [:]
            for name in source.names {
                let canonical = naming.canonical(name)
                if let other = map[canonical] {
                    throw MergeError.incompatible(path: source.path, tensor: name, detail: "same tensor as '\(other)' once prefixes are stripped")
                }
                map[canonical] = name
            }
            return map
        }
        let modelMaps = try models.map(canonicalMap)
        let blockCount = (reference.config?["num_hidden_layers"] as? Int)
            ?? (reference.names.compactMap { name -> Int? in
                if case let .block(i) = naming.layer(of: naming.canonical(name)) { return i } else { return nil }
            }.max().map { $0 + 1 }) ?? 1

        var planned: [PlannedTensor] = []
        for name in reference.names {
            let canonical = naming.canonical(name)
            let (file, info) = reference.tensor(name)!
            var modelNames: [String] = []
            for (number, model) in models.enumerated() {
                guard let stored = modelMaps[number][canonical], let (modelFile, modelInfo) = model.tensor(stored) else {
                    throw MergeError.missingTensor(model: model.path, tensor: name, base: referenceLabel)
                }
                if modelInfo.shape != info.shape {
                    throw MergeError.incompatible(path: modelFile.path, tensor: stored, detail: "shape \(modelInfo.shape) differs from \(info.shape) in \(file.path)")
                }
                if modelInfo.dtype != info.dtype {
                    throw MergeError.incompatible(path: modelFile.path, tensor: stored, detail: "dtype \(modelInfo.dtype.rawValue) differs from \(info.dtype.rawValue) in \(file.path)")
                }
                modelNames.append(stored)
            }
            let layer = naming.layer(of: canonical)
            let floating = info.dtype.isFloatingPoint
            planned.append(PlannedTensor(
                name: name, canonicalName: canonical, layer: layer, shape: info.shape, inputDType: info.dtype,
                outputDType: floating ? (config.outputDType ?? info.dtype) : info.dtype,
                parameters: floating ? try Self.parameters(config, layer: layer, blockCount: blockCount) : nil,
                baseName: base == nil ? nil : name, modelNames: modelNames))
        }
        // Stable sort by layer keeps each layer's tensors in the reference's storage order.
        planned = planned.enumerated().sorted { ($0.element.layer, $0.offset) < ($1.element.layer, $1.offset) }.map(\.element)
        tensors = planned

        var layers: [(key: LayerKey, tensors: Range<Int>)] = []
        var start = 0
        for index in 1...planned.count where index == planned.count || planned[index].layer != planned[start].layer {
            layers.append((planned[start].layer, start..<index))
            start = index
        }
        self.layers = layers
        shards = Self.planShards(planned, limit: shardSize ?? config.shardSize ?? Self.defaultShardSize)

        let referenceNames = Set(reference.names.map(naming.canonical))
        var heads: [PlannedHead] = []
        var usedNames = Set<String>()
        for (number, model) in models.enumerated() {
            let extra = model.names.filter { !referenceNames.contains(naming.canonical($0)) }
            guard !extra.isEmpty else { continue }
            var label = URL(fileURLWithPath: model.path).deletingPathExtension().lastPathComponent
            if usedNames.contains(label) { label += "-\(number)" }
            usedNames.insert(label)
            heads.append(PlannedHead(modelIndex: number, fileName: "heads/\(label).safetensors", names: extra))
        }
        self.heads = heads
    }

    /// Resolves a tensor's method parameters: a model's own value, else the top-level default.
    /// Gradients are evaluated at t = i/(L−1) for block i (1 for a single block), and at t = 0 for the
    /// embeddings and the final layers alike — what current mergekit does (plan.py: its pre- and
    /// post-layer weights are planned with a ConfigReader at t = 0).
    static func parameters(_ config: MergeConfig, layer: LayerKey, blockCount: Int) throws -> TensorMergeParameters {
        let t: Double = switch layer {
        case .embeddings, .final: 0
        case let .block(i): blockCount > 1 ? Double(i) / Double(blockCount - 1) : 1
        }
        func value(_ key: String, model: ModelEntry?, default fallback: Double) -> Double {
            (model?.parameters[key] ?? config.parameters[key])?.value(at: t) ?? fallback
        }
        let method = config.method
        let weights = config.models.map { Float(value("weight", model: $0, default: 1)) }
        let densities = config.models.map { value("density", model: $0, default: 1) }
        for (number, density) in densities.enumerated() where !(density > 0) {
            throw MergeError.config(path: config.path, detail: "models[\(number)]: density must be > 0, got \(density)")
        }
        let normalize = value("normalize", model: nil, default: method.normalizesByDefault ? 1 : 0) != 0
        let lambda = Float(value("lambda", model: nil, default: 1))
        var rescale: DARERescale = .density
        if config.parameters["rescale_norm"]?.value(at: t) == 1 { rescale = .l1 }
        if config.parameters["rescale"]?.value(at: t) == 0 { rescale = .none }
        if normalize && [MergeMethod.linear, .taskArithmetic, .dareLinear].contains(method) && weights.reduce(0, +) == 0 {
            throw MergeError.config(path: config.path, detail: "weights sum to zero, cannot normalize")
        }
        return TensorMergeParameters(weights: weights, densities: densities, lambda: lambda, normalize: normalize, rescale: rescale)
    }

    /// Fills shards in plan order, starting a new one when the next tensor would pass `limit`
    /// (as transformers' `save_pretrained` does). One shard is `model.safetensors`, several are
    /// `model-0000k-of-0000n.safetensors` with an index.
    static func planShards(_ tensors: [PlannedTensor], limit: Int) -> [PlannedShard] {
        var ranges: [Range<Int>] = []
        var start = 0, bytes = 0
        for (index, tensor) in tensors.enumerated() {
            let size = tensor.outputSpec.byteCount
            if index > start && bytes + size > limit {
                ranges.append(start..<index)
                start = index
                bytes = 0
            }
            bytes += size
        }
        ranges.append(start..<tensors.count)
        let count = ranges.count
        return ranges.enumerated().map { number, range in
            let name = count == 1 ? "model.safetensors" : String(format: "model-%05d-of-%05d.safetensors", number + 1, count)
            return PlannedShard(fileName: name, tensors: range, layout: SafetensorsLayout(tensors[range].map(\.outputSpec)))
        }
    }

    // MARK: - Figures

    /// Every input weight file, base first, in plan order.
    public var inputFiles: [SafetensorsFile] { (base.map { [$0] } ?? []).flatMap(\.files) + models.flatMap(\.files) }

    public var inputBytes: Int { inputFiles.reduce(0) { $0 + $1.mapping.size } }
    public var outputBytes: Int { shards.reduce(0) { $0 + $1.layout.fileSize } }

    /// Bytes per element of the widest output dtype: what the output window buffers are sized for.
    public var widestOutputElement: Int { tensors.map(\.outputDType.size).max() ?? 4 }

    /// Bytes per element of the widest input dtype: what the input window buffers are sized for.
    public var widestInputElement: Int {
        inputFiles.flatMap(\.tensors).map(\.dtype.size).max() ?? 4
    }

    /// Bytes of `tensor` in all its inputs (base and fine-tunes) together.
    public func inputByteCount(_ tensor: PlannedTensor) -> Int {
        (tensor.baseName.map { base!.tensor($0)!.1.byteCount } ?? 0)
            + zip(models, tensor.modelNames).reduce(0) { $0 + $1.0.tensor($1.1)!.1.byteCount }
    }

    /// Whether the data-free executor reads `tensor` through the mapping (see `InputWindow`): the
    /// method reads it twice, and its inputs fit `mappedTensorBytes`.
    public func readsThroughMapping(_ tensor: PlannedTensor, mappedTensorBytes: Int) -> Bool {
        guard let parameters = tensor.parameters, TensorMerger.needsPreparation(config.method, parameters) else { return false }
        return inputByteCount(tensor) <= mappedTensorBytes
    }

    /// Peak memory the data-free executor needs with `threads` workers: per worker its block scratch and
    /// `outputWindows` windows of converted output (being written while the next is merged), TIES's threshold selection,
    /// one window of every input's bytes, the mapped pages of the largest tensor read twice through the
    /// mapping, and what the process itself holds. (The shard's bytes wait in
    /// the page cache, not in the process, until their background sync drops them: at most two sync
    /// intervals, 64 MiB.)
    public func estimatedPeakBytes(threads: Int) -> Int {
        let perWorker = MergeWorkspace.byteCount(modelCount: models.count) + Self.outputWindows * Self.windowChunks(workers: 1) * chunkSize * widestOutputElement
        let largest = tensors.map(\.elementCount).max() ?? 0
        let histograms = config.method == .ties
            ? TensorMerger.thresholdSelectionBytes(modelCount: models.count, threads: threads, elementCount: largest, chunkSize: chunkSize) : 0
        let inputWindow = (models.count + 1) * Self.windowChunks(workers: threads) * chunkSize * widestInputElement
        let headerBytes = shards.reduce(0) { $0 + $1.layout.headerBytes.count } * 2
        let mapped = tensors.filter { readsThroughMapping($0, mappedTensorBytes: Self.defaultMappedTensorBytes) }.map(inputByteCount).max() ?? 0
        return Self.processBaseline + threads * perWorker + histograms + inputWindow + headerBytes + mapped
            + distillPeakBytes(threads: threads)
    }

    /// A data-driven method's working set (zero for data-free methods or a base without a runnable architecture):
    /// the largest of `distillLayerBytes` over the layers.
    public func distillPeakBytes(threads: Int) -> Int {
        layers.compactMap { distillLayerBytes($0.key, threads: threads) }.max() ?? 0
    }

    /// A data-driven method's working set while it handles `layer`: ProDistill training a block or
    /// computing the first block's inputs through the embeddings (nil for the final layers);
    /// SAMerging/AdaMerging passing through the layer forward or backward; nil for data-free methods.
    public func distillLayerBytes(_ layer: LayerKey, threads: Int) -> Int? {
        guard let settings = config.distill, let base, let architecture = try? Architecture(source: base) else { return nil }
        func parameters(_ key: LayerKey) -> Int {
            layers.first { $0.key == key }.map { tensors[$0.tensors].reduce(0) { $0 + $1.elementCount } } ?? 0
        }
        if EndToEndMerge.Method(rawValue: config.methodName) != nil {
            let calibrationExamples = config.models.map { entry in
                (try? String(contentsOfFile: entry.calibration!, encoding: .utf8))?.split(separator: "\n").count ?? 0
            }
            return EndToEndMerge.estimatedPeakBytes(
                layer: layer, config: architecture.config, layerParameters: parameters(layer), embeddingParameters: parameters(.embeddings),
                calibrationExamples: calibrationExamples, settings: settings, threads: threads)
        }
        switch layer {
        case .final: return nil
        case .embeddings, .block:
            return ProDistill.estimatedPeakBytes(
                config: architecture.config, largestBlockParameters: layer == .embeddings ? 0 : parameters(layer),
                embeddingParameters: layer == .embeddings ? parameters(.embeddings) : 0,
                tasks: models.count, settings: settings, threads: threads)
        }
    }

    /// Resident memory of the runtime, libraries and code before any merge work (measured, rounded up).
    public static let processBaseline = 40 << 20
}
