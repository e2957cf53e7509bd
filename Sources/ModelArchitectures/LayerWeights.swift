// LayerWeights: one layer's tensors as f32, keyed by their names inside the layer, read from a mapped model.
import SafetensorsFormat
import TensorKernels

/// The f32 weights of one layer (or their gradients), keyed by local name: the canonical name with
/// the block prefix removed (`attention.self.query.weight`, `self_attn.q_proj.weight`), or the
/// canonical name itself for embeddings and final layers.
public final class LayerWeights: @unchecked Sendable {
    public private(set) var tensors: [String: Tensor]
    /// Where the weights came from, for error messages.
    public let origin: String

    public init(tensors: [String: Tensor], origin: String) {
        self.tensors = tensors
        self.origin = origin
    }

    /// Zero tensors with the same names and shapes: a gradient accumulator.
    public func zerosLike(origin: String = "gradients") -> LayerWeights {
        LayerWeights(tensors: tensors.mapValues { Tensor(shape: $0.shape) }, origin: origin)
    }

    public subscript(name: String) -> Tensor? { tensors[name] }

    /// The tensor `name`, checked against `shape`.
    public func require(_ name: String, _ shape: [Int]) throws(ArchitectureError) -> Tensor {
        guard let tensor = tensors[name] else { throw .missingTensor(path: origin, tensor: name) }
        guard tensor.shape == shape else { throw .badShape(path: origin, tensor: name, expected: shape, actual: tensor.shape) }
        return tensor
    }

    /// The tensor `name` if present (optional biases), checked against `shape`.
    public func optional(_ name: String, _ shape: [Int]) throws(ArchitectureError) -> Tensor? {
        tensors[name] == nil ? nil : try require(name, shape)
    }

}

/// Reads layers of one model as f32, releasing the mapped pages of each tensor once converted, so a
/// streamed pass over the model keeps only the current layer resident.
public final class LayerReader: @unchecked Sendable {
    public let source: ModelSource
    public let naming: TensorNaming
    /// Layer → (local name → stored name).
    public let layerTensors: [LayerKey: [String: String]]

    public init(source: ModelSource) {
        self.source = source
        naming = TensorNaming(modelType: source.modelType)
        var layers: [LayerKey: [String: String]] = [:]
        for name in source.names {
            let canonical = naming.canonical(name)
            let layer = naming.layer(of: canonical)
            layers[layer, default: [:]][naming.localName(of: canonical, in: layer)] = name
        }
        layerTensors = layers
    }

    /// The block indices present, ascending.
    public var blockIndices: [Int] {
        layerTensors.keys.compactMap { if case let .block(i) = $0 { i } else { nil } }.sorted()
    }

    /// Converts every tensor of `layer` to f32.
    public func read(_ layer: LayerKey) -> LayerWeights {
        var tensors: [String: Tensor] = [:]
        for (local, stored) in layerTensors[layer] ?? [:] {
            let (file, info) = source.tensor(stored)!
            guard info.dtype.isFloatingPoint else { continue }
            let tensor = Tensor(shape: info.shape)
            file.readFloats(info, elements: 0..<info.elementCount, into: tensor.data)
            file.mapping.releaseCovering(file.fileRange(of: info))
            tensors[local] = tensor
        }
        return LayerWeights(tensors: tensors, origin: "\(source.path) (\(layer))")
    }
}
