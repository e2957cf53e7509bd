// Inspect: what a checkpoint holds — tensors, dtypes, shapes, bytes and layer groups.
import Foundation
import ModelArchitectures
import SafetensorsFormat

/// A summary of one model for `inspect`.
public struct InspectReport: Codable, Sendable {
    public struct Tensor: Codable, Sendable {
        public var name: String
        public var dtype: String
        public var shape: [Int]
        public var bytes: Int
        public var layer: String
        public var file: String
    }

    public struct Layer: Codable, Sendable {
        public var layer: String
        public var tensors: Int
        public var bytes: Int
    }

    /// The runnable architecture (`forward`, data-driven merges), when config.json names a supported one.
    public struct ArchitectureSummary: Codable, Sendable {
        public var family: String
        public var blocks: Int
        public var hidden: Int
        public var heads: Int
        public var kv_heads: Int
        public var head_dim: Int
        public var intermediate: Int
        public var vocabulary: Int
    }

    public var path: String
    public var model_type: String?
    public var architecture: ArchitectureSummary?
    /// Why the model cannot be run (merging works regardless).
    public var architecture_note: String?
    public var files: [String]
    public var total_bytes: Int
    public var parameters: Int
    public var tensors: [Tensor]
    public var layers: [Layer]
}

public func inspectModel(path: String) throws -> InspectReport {
    let source = try ModelSource(path: path)
    let naming = TensorNaming(modelType: source.modelType)
    var tensors: [InspectReport.Tensor] = []
    var layers: [LayerKey: (count: Int, bytes: Int)] = [:]
    for name in source.names {
        let (file, info) = source.tensor(name)!
        let layer = naming.layer(of: naming.canonical(name))
        tensors.append(.init(name: name, dtype: info.dtype.rawValue, shape: info.shape, bytes: info.byteCount,
                             layer: layer.description, file: URL(fileURLWithPath: file.path).lastPathComponent))
        layers[layer, default: (0, 0)].count += 1
        layers[layer, default: (0, 0)].bytes += info.byteCount
    }
    var architecture: InspectReport.ArchitectureSummary? = nil
    var note: String? = nil
    do {
        let c = try Architecture(source: source).config
        architecture = .init(family: c.family.rawValue, blocks: c.layers, hidden: c.hidden, heads: c.heads, kv_heads: c.kvHeads,
                             head_dim: c.headDim, intermediate: c.intermediate, vocabulary: c.vocabulary)
    } catch {
        note = error.description
    }
    return InspectReport(
        path: path, model_type: source.modelType, architecture: architecture, architecture_note: note, files: source.files.map(\.path),
        total_bytes: tensors.reduce(0) { $0 + $1.bytes },
        parameters: source.names.reduce(0) { $0 + source.tensor($1)!.info.elementCount },
        tensors: tensors,
        layers: layers.keys.sorted().map { .init(layer: $0.description, tensors: layers[$0]!.count, bytes: layers[$0]!.bytes) })
}
