// CoefficientAdam: Adam on merging coefficients λ, stepping the merged weights directly — element-wise (collapsed) and per-tensor.
import Foundation
import ModelArchitectures
import TensorKernels

/// Adam (β 0.9/0.999, ε 1e-8, as torch.optim.Adam) on coefficients λᵢ of W = θ₀ + Σᵢ λᵢ ⊙ τᵢ, given
/// G = ∂L/∂W. Since ∂L/∂λᵢ = G ⊙ τᵢ, the optimizer moves W itself; λ is never materialised.
public protocol CoefficientOptimizer {
    /// One step: updates `weights` in place from `gradients`, reading task vectors from `tasks`.
    func step(weights: LayerWeights, gradients: LayerWeights, tasks: TaskVectors, threads: Int)
}

struct AdamConstants {
    let learningRate: Float
    let beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8
}

/// Element-wise λ with optimizer state the size of one weight (DESIGN.md §5). With m = v = 0 at the
/// start, λᵢ's moments are mᵢ = τᵢ ⊙ M and vᵢ = τᵢ² ⊙ V, where M and V are Adam's moments of G. So
/// torch's update of λᵢ, −(lr/bc₁)·mᵢ/(√vᵢ/√bc₂ + ε), moves W by
/// ΔW = Σᵢ τᵢ ⊙ Δλᵢ = −(lr/bc₁)·M ⊙ Σᵢ τᵢ² / (|τᵢ|·√V/√bc₂ + ε), exactly, ε included.
public final class ElementwiseAdam: CoefficientOptimizer {
    let constants: AdamConstants
    let first: [String: Tensor], second: [String: Tensor]
    private(set) var steps = 0

    public init(shapes: [String: [Int]], learningRate: Double) {
        constants = AdamConstants(learningRate: Float(learningRate))
        first = shapes.mapValues { Tensor(shape: $0) }
        second = shapes.mapValues { Tensor(shape: $0) }
    }

    public func step(weights: LayerWeights, gradients: LayerWeights, tasks: TaskVectors, threads: Int) {
        steps += 1
        let c = constants
        let bias1 = 1 - Float(pow(Double(c.beta1), Double(steps))), bias2 = Float(pow(Double(c.beta2), Double(steps)))
        let stepSize = c.learningRate / bias1, sqrtBias2 = (1 - bias2).squareRoot()
        tasks.forEachChunk(threads: threads) { name, elements, _, taus in
            let offset = elements.lowerBound, count = elements.count
            let w = weights[name]!.data + offset, g = gradients[name]!.data + offset
            let m = first[name]!.data + offset, v = second[name]!.data + offset
            // Three flat loops over the chunk (moments, then one pass per task, then W) instead of
            // one loop with the tasks inside: each vectorises. Same operations in the same order.
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * count) { buffer in
                let scale = buffer.baseAddress!, sum = scale + count
                for j in 0..<count {
                    let gj = g[j]
                    m[j] = c.beta1 * m[j] + (1 - c.beta1) * gj
                    v[j] = c.beta2 * v[j] + (1 - c.beta2) * gj * gj
                    scale[j] = v[j].squareRoot() / sqrtBias2
                    sum[j] = 0
                }
                for tau in taus {
                    for j in 0..<count {
                        let t = tau[j]
                        sum[j] += t * t / (abs(t) * scale[j] + c.epsilon)
                    }
                }
                for j in 0..<count { w[j] -= stepSize * m[j] * sum[j] }
            }
        }
    }
}

/// One λ per tensor per task: ∂L/∂λᵢ = Σ G ⊙ τᵢ over the tensor (summed per fixed chunk, then in
/// chunk order, so threads do not change it); Adam on those T × tensors scalars; W += Σᵢ Δλᵢ·τᵢ.
public final class TensorwiseAdam: CoefficientOptimizer {
    let constants: AdamConstants
    var first: [String: [Double]] = [:], second: [String: [Double]] = [:]
    private(set) var steps = 0

    public init(names: [String], taskCount: Int, learningRate: Double) {
        constants = AdamConstants(learningRate: Float(learningRate))
        for name in names {
            first[name] = [Double](repeating: 0, count: taskCount)
            second[name] = first[name]
        }
    }

    public func step(weights: LayerWeights, gradients: LayerWeights, tasks: TaskVectors, threads: Int) {
        steps += 1
        let T = tasks.taskCount
        let dots = tasks.dotProducts(gradients, threads: threads)
        var deltas: [String: [Float]] = [:]
        let c = constants
        let bias1 = 1 - pow(Double(c.beta1), Double(steps)), bias2 = 1 - pow(Double(c.beta2), Double(steps))
        for (name, gradient) in dots {
            deltas[name] = (0..<T).map { i in
                first[name]![i] = Double(c.beta1) * first[name]![i] + (1 - Double(c.beta1)) * gradient[i]
                second[name]![i] = Double(c.beta2) * second[name]![i] + (1 - Double(c.beta2)) * gradient[i] * gradient[i]
                let denominator = second[name]![i].squareRoot() / bias2.squareRoot() + Double(c.epsilon)
                return Float(-Double(c.learningRate) / bias1 * first[name]![i] / denominator)
            }
        }
        // Pass 2: move W by Σᵢ Δλᵢ·τᵢ.
        tasks.forEachChunk(threads: threads) { name, elements, _, taus in
            let w = weights[name]!.data + elements.lowerBound, delta = deltas[name]!
            for j in 0..<elements.count {
                var sum: Float = 0
                for (i, tau) in taus.enumerated() { sum += delta[i] * tau[j] }
                w[j] += sum
            }
        }
    }
}
