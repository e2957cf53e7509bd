// CoefficientAdamTests: the collapsed optimizers against explicit Adam on every λ, in double precision.
import Foundation
import Distillation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels
import Testing
import TestSupport

/// A one-block "model" (two tensors in block 0) as a base and three fine-tunes, with τ spanning
/// magnitudes from 1e-5 to 1e-2 (where Adam's ε matters) and some exact zeros.
private struct Family {
    let directory = makeTemporaryDirectory()
    let names = ["layers.0.a.weight", "layers.0.b.weight"]
    let shapes = [[6, 50], [70]]
    var base: [[Float]] = [], tasks: [[[Float]]] = []

    init() throws {
        for (i, shape) in shapes.enumerated() {
            base.append(testValues(shape.reduce(1, *), seed: UInt64(10 + i)))
        }
        for t in 0..<3 {
            tasks.append(base.enumerated().map { i, values in
                let noise = testValues(values.count, seed: UInt64(100 + 10 * t + i))
                return zip(values, noise).enumerated().map { j, pair in
                    j % 17 == 0 ? pair.0 : pair.0 + pair.1 * Float(pow(10.0, -5.0 + Double(j % 4)))
                }
            })
        }
        try writeModelDirectory(directory + "/base", zip(names, zip(shapes, base)).map { ($0, $1.0, $1.1) })
        for t in 0..<3 {
            try writeModelDirectory(directory + "/ft-\(t)", zip(names, zip(shapes, tasks[t])).map { ($0, $1.0, $1.1) })
        }
    }

    func vectors() throws -> TaskVectors {
        try TaskVectors(layer: .block(0), base: LayerReader(source: ModelSource(path: directory + "/base")),
                        fineTunes: (0..<3).map { LayerReader(source: try ModelSource(path: directory + "/ft-\($0)")) })
    }

    /// τ in double, exactly as f32 subtraction gives it.
    func tau(_ t: Int, _ i: Int) -> [Double] { zip(tasks[t][i], base[i]).map { Double($0 - $1) } }
}

@Suite("Coefficient optimizers")
struct CoefficientAdamTests {
    @Test("element-wise: W-sized state gives the same weights as Adam on all T·P coefficients", arguments: [1, 2])
    func elementwise(threads: Int) throws {
        let family = try Family()
        defer { try? FileManager.default.removeItem(atPath: family.directory) }
        let vectors = try family.vectors()
        let weights = vectors.taskArithmetic(lambda: 0.3, threads: threads)
        let optimizer = ElementwiseAdam(shapes: vectors.shapes, learningRate: 0.01)
        // The reference: λ per element per task, torch.optim.Adam's update in double.
        var lambda = family.shapes.map { shape in (0..<3).map { _ in [Double](repeating: 0.3, count: shape.reduce(1, *)) } }
        var m = lambda.map { $0.map { $0.map { _ in 0.0 } } }, v = m
        for step in 1...40 {
            let gradients = weights.zerosLike()
            for (i, name) in family.names.enumerated() {
                let g = testValues(gradients[String(name.dropFirst(9))]!.count, seed: UInt64(1000 + step * 7 + i), scale: 0.5)
                gradients[String(name.dropFirst(9))]!.data.update(from: g, count: g.count)
                for t in 0..<3 {
                    let tau = family.tau(t, i)
                    for j in 0..<g.count {
                        let grad = Double(g[j]) * tau[j]
                        m[i][t][j] = 0.9 * m[i][t][j] + 0.1 * grad
                        v[i][t][j] = 0.999 * v[i][t][j] + 0.001 * grad * grad
                        let denominator = v[i][t][j].squareRoot() / (1 - pow(0.999, Double(step))).squareRoot() + 1e-8
                        lambda[i][t][j] -= 0.01 / (1 - pow(0.9, Double(step))) * m[i][t][j] / denominator
                    }
                }
            }
            optimizer.step(weights: weights, gradients: gradients, tasks: vectors, threads: threads)
        }
        for (i, name) in family.names.enumerated() {
            let ours = weights[String(name.dropFirst(9))]!.values
            for j in 0..<ours.count {
                let expected = Double(family.base[i][j]) + (0..<3).reduce(0.0) { $0 + lambda[i][$1][j] * family.tau($1, i)[j] }
                #expect(abs(Double(ours[j]) - expected) <= 2e-6 * max(1, abs(expected)), "\(name)[\(j)]")
            }
        }
    }

    @Test("task vectors kept in memory give the same bits as task vectors read from the mapped files")
    func residentTaskVectors() throws {
        let family = try Family()
        defer { try? FileManager.default.removeItem(atPath: family.directory) }
        var results: [[Float]] = []
        for resident in [false, true] {
            let vectors = try family.vectors()
            if resident { vectors.keepInMemory(threads: 2) }
            let weights = vectors.taskArithmetic(lambda: 0.3, threads: 2)
            let optimizer = ElementwiseAdam(shapes: vectors.shapes, learningRate: 0.01)
            for step in 1...20 {
                let gradients = weights.zerosLike()
                for (i, name) in gradients.tensors.keys.sorted().enumerated() {
                    let g = testValues(gradients[name]!.count, seed: UInt64(3000 + step * 7 + i), scale: 0.5)
                    gradients[name]!.data.update(from: g, count: g.count)
                }
                optimizer.step(weights: weights, gradients: gradients, tasks: vectors, threads: 2)
            }
            results.append(weights.tensors.keys.sorted().flatMap { weights[$0]!.values })
        }
        #expect(results[0] == results[1])
    }

    @Test("per-tensor: one λ per tensor per task follows Adam on Σ G⊙τᵢ, independently of threads")
    func tensorwise() throws {
        let family = try Family()
        defer { try? FileManager.default.removeItem(atPath: family.directory) }
        let vectors = try family.vectors()
        var results: [[Float]] = []
        for threads in [1, 2] {
            let weights = vectors.taskArithmetic(lambda: 0.3, threads: threads)
            let optimizer = TensorwiseAdam(names: vectors.names, taskCount: 3, learningRate: 0.05)
            var lambda = [[Double]](repeating: [0.3, 0.3, 0.3], count: 2)
            var m = [[Double]](repeating: [0, 0, 0], count: 2), v = m
            for step in 1...10 {
                let gradients = weights.zerosLike()
                for (i, name) in family.names.enumerated() {
                    let local = String(name.dropFirst(9))
                    let g = testValues(gradients[local]!.count, seed: UInt64(500 + step * 3 + i))
                    gradients[local]!.data.update(from: g, count: g.count)
                    for t in 0..<3 {
                        let grad = zip(g, family.tau(t, i)).reduce(0.0) { $0 + Double($1.0) * $1.1 }
                        m[i][t] = 0.9 * m[i][t] + 0.1 * grad
                        v[i][t] = 0.999 * v[i][t] + 0.001 * grad * grad
                        lambda[i][t] -= 0.05 / (1 - pow(0.9, Double(step))) * m[i][t]
                            / (v[i][t].squareRoot() / (1 - pow(0.999, Double(step))).squareRoot() + 1e-8)
                    }
                }
                optimizer.step(weights: weights, gradients: gradients, tasks: vectors, threads: threads)
            }
            for (i, name) in family.names.enumerated() {
                let ours = weights[String(name.dropFirst(9))]!.values
                for j in 0..<ours.count {
                    let expected = Double(family.base[i][j]) + (0..<3).reduce(0.0) { $0 + lambda[i][$1] * family.tau($1, i)[j] }
                    #expect(abs(Double(ours[j]) - expected) <= 2e-6 * max(1, abs(expected)))
                }
            }
            results.append(family.names.flatMap { weights[String($0.dropFirst(9))]!.values })
        }
        #expect(results[0] == results[1], "thread count changed the result")
    }
}
