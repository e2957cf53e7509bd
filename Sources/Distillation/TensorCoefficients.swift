// TensorCoefficients: one merging coefficient per tensor per task over the whole model, and the merged layers they define.
import ModelArchitectures
import TensorKernels

/// λ for W_k = θ₀_k + Σᵢ λ[i][k]·τᵢ,k over every floating-point tensor k of the base, ordered by the
/// base's stored tensor name (so coefficient vectors line up with the PyTorch reference's). Values
/// are kept in double (the optimizer's); merged weights are computed in f32 from the mapped inputs.
public final class TensorCoefficients {
    public struct Key: Sendable {
        public let layer: LayerKey
        public let local: String
        public let stored: String
    }

    public let keys: [Key]
    public let taskCount: Int
    /// The layers in streaming order.
    public let layers: [LayerKey]
    let base: LayerReader
    let fineTunes: [LayerReader]
    /// Layer → local name → k.
    private let position: [LayerKey: [String: Int]]

    public init(base: LayerReader, fineTunes: [LayerReader]) {
        self.base = base
        self.fineTunes = fineTunes
        taskCount = fineTunes.count
        var keys: [Key] = []
        for (layer, tensors) in base.layerTensors {
            for (local, stored) in tensors where base.source.tensor(stored)!.1.dtype.isFloatingPoint {
                keys.append(Key(layer: layer, local: local, stored: stored))
            }
        }
        self.keys = keys.sorted { $0.stored < $1.stored }
        var position: [LayerKey: [String: Int]] = [:]
        for (k, key) in self.keys.enumerated() { position[key.layer, default: [:]][key.local] = k }
        self.position = position
        layers = position.keys.sorted()
    }

    public var count: Int { keys.count }
    public var naming: TensorNaming { base.naming }

    /// The coefficients of `layer`'s tensors, by local name, from `values` laid out [task][k].
    func lambdas(_ layer: LayerKey, values: [Double]) -> [String: [Float]] {
        (position[layer] ?? [:]).mapValues { k in (0..<taskCount).map { Float(values[$0 * count + k]) } }
    }

    /// `layer`'s merged weights at `values`.
    public func merged(_ layer: LayerKey, values: [Double], threads: Int) throws -> LayerWeights {
        defer { releasePages() }
        return try TaskVectors(layer: layer, base: base, fineTunes: fineTunes).merged(lambdas: lambdas(layer, values: values), threads: threads)
    }

    /// Adds ∂L/∂λ[i][k] = ⟨∂L/∂W_k, τᵢ,k⟩ for `layer`'s tensors to `gradient` ([task][k]).
    public func accumulate(_ layer: LayerKey, weightGradients: LayerWeights, into gradient: inout [Double], threads: Int) throws {
        defer { releasePages() }
        let dots = try TaskVectors(layer: layer, base: base, fineTunes: fineTunes).dotProducts(weightGradients, threads: threads)
        for (local, k) in position[layer] ?? [:] {
            for i in 0..<taskCount { gradient[i * count + k] += dots[local]![i] }
        }
    }

    /// Drops every mapped page of the inputs. Chunks release their own pages as they go, but page
    /// faults map neighbouring pages too ("fault-around"); without this they pile up with depth.
    func releasePages() {
        for reader in [base] + fineTunes { for file in reader.source.files { file.mapping.releaseAll() } }
    }
}
