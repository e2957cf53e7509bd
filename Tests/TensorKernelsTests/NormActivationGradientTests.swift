// NormActivationGradientTests: RMSNorm, softmax, SwiGLU, embeddings and RoPE against finite differences and closed forms.
import Foundation
import Testing
import TensorKernels
import TestSupport

@Suite("Norm, softmax, SwiGLU, embedding and RoPE gradients")
struct NormActivationGradientTests {
    let B = 4, C = 6

    @Test("RMSNorm backward matches finite differences for input and weight")
    func rmsNorm() {
        var x = testValues(B * C, seed: 11, scale: 2), w = testValues(C, seed: 12).map { $0 + 1 }
        let g = testValues(B * C, seed: 13)
        var rstd = zeros(B)
        func forward(_ x: [Float], _ w: [Float]) -> [Float] {
            var out = zeros(B * C)
            rmsNormForward(&out, rstd: &rstd, x, w, B: B, C: C, eps: 1e-6)
            return out
        }
        let out = forward(x, w)
        // Closed form for one element: w·x/√(mean(x²)+eps).
        let row0 = x[0..<C].map { Double($0) }
        let expected = Double(w[2]) * row0[2] / ((row0.map { $0 * $0 }.reduce(0, +) / Double(C)) + 1e-6).squareRoot()
        #expect(abs(Double(out[2]) - expected) < 1e-6)
        _ = forward(x, w)
        var dx = zeros(B * C), dw = zeros(C)
        rmsNormBackward(dinp: &dx, dweight: &dw, dout: g, inp: x, weight: w, rstd: rstd, B: B, C: C)
        let (sx, sw) = (x, w)
        #expect(gradientError(dx, numericGradient(&x, step: 1e-2) { dot(forward($0, sw), g) }) < 5e-3)
        #expect(gradientError(dw, numericGradient(&w) { dot(forward(sx, $0), g) }) < 2e-3)
    }

    @Test("softmax sums to one, is uniform on a fully masked row, and its backward matches finite differences")
    func softmax() {
        var x = testValues(B * C, seed: 14, scale: 3)
        let g = testValues(B * C, seed: 15)
        func forward(_ x: [Float]) -> [Float] {
            var out = zeros(B * C)
            softmaxForward(&out, x, rows: B, C: C)
            return out
        }
        let p = forward(x)
        for row in 0..<B { #expect(abs(p[row * C..<(row + 1) * C].reduce(0, +) - 1) < 1e-6) }
        let masked = forward([Float](repeating: -Float.greatestFiniteMagnitude, count: B * C))
        #expect(masked.allSatisfy { abs($0 - 1 / Float(C)) < 1e-7 })
        var dx = zeros(B * C)
        softmaxBackward(dinp: &dx, dout: g, probabilities: p, rows: B, C: C)
        #expect(gradientError(dx, numericGradient(&x, step: 1e-3) { dot(forward($0), g) }) < 5e-3)
    }

    @Test("SwiGLU backward matches finite differences for gate and up")
    func swiglu() {
        var gate = testValues(30, seed: 16, scale: 3), up = testValues(30, seed: 17, scale: 2)
        let g = testValues(30, seed: 18)
        func forward(_ gate: [Float], _ up: [Float]) -> [Float] {
            var out = zeros(30)
            swigluForward(&out, gate: gate, up: up, N: 30)
            return out
        }
        var dgate = zeros(30), dup = zeros(30)
        swigluBackward(dgate: &dgate, dup: &dup, dout: g, gate: gate, up: up, N: 30)
        let (sg, su) = (gate, up)
        #expect(gradientError(dgate, numericGradient(&gate, step: 1e-3) { dot(forward($0, su), g) }) < 5e-3)
        #expect(gradientError(dup, numericGradient(&up, step: 1e-3) { dot(forward(sg, $0), g) }) < 5e-3)
    }

    @Test("embedding gathers rows and scatters gradients, repeated ids summing")
    func embedding() {
        let table = testValues(5 * C, seed: 19), ids: [Int32] = [3, 0, 3, 4]
        var out = zeros(4 * C)
        embeddingForward(&out, ids: ids, table: table, N: 4, C: C)
        #expect(Array(out[C..<2 * C]) == Array(table[0..<C]))
        #expect(Array(out[2 * C..<3 * C]) == Array(table[3 * C..<4 * C]))
        let g = testValues(4 * C, seed: 20)
        var dtable = zeros(5 * C)
        embeddingBackward(dtable: &dtable, dout: g, ids: ids, N: 4, C: C)
        for i in 0..<C {
            #expect(dtable[3 * C + i] == g[i] + g[2 * C + i])
            #expect(dtable[1 * C + i] == 0)
        }
    }

    @Test("RoPE rotates pairs by position·frequency, preserves norms, and its backward is the inverse rotation",
          arguments: [RoPEScaling.none, .llama3(factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4, originalMaxPositions: 64)])
    func rope(scaling: RoPEScaling) {
        let (b, s, heads, d) = (2, 5, 3, 8)
        let tables = RoPETables(headDim: d, positions: s, theta: 100, scaling: scaling)
        var x = testValues(b * s * heads * d, seed: 21)
        let g = testValues(x.count, seed: 22)
        func forward(_ x: [Float]) -> [Float] {
            var y = x
            ropeForward(&y, tables: tables, B: b, S: s, heads: heads)
            return y
        }
        let y = forward(x)
        // Position 3, head 1, pair (1, 1 + d/2) of example 0, by hand.
        let base = (3 * heads + 1) * d, angle = 3 * tables.inverseFrequencies[1]
        let expected = Double(x[base + 1]) * cos(angle) - Double(x[base + 1 + d / 2]) * sin(angle)
        #expect(abs(Double(y[base + 1]) - expected) < 1e-6)
        for v in stride(from: 0, to: x.count, by: d) {
            let before = x[v..<v + d].reduce(0) { $0 + $1 * $1 }, after = y[v..<v + d].reduce(0) { $0 + $1 * $1 }
            #expect(abs(before - after) < 1e-5)
        }
        var dx = g
        ropeBackward(&dx, tables: tables, B: b, S: s, heads: heads)
        #expect(gradientError(dx, numericGradient(&x, step: 1e-3) { dot(forward($0), g) }) < 5e-3)
        if case .llama3 = scaling {
            // Wavelengths 6.3, 19.9, 62.8, 198.7 against bounds 16 and 64: kept, smoothed, smoothed, divided by the factor.
            let plain = RoPETables(headDim: d, positions: s, theta: 100)
            #expect(tables.inverseFrequencies[0] == plain.inverseFrequencies[0])
            #expect(abs(tables.inverseFrequencies[3] - plain.inverseFrequencies[3] / 8) < 1e-15)
            let smooth = (64 / (2 * Double.pi / plain.inverseFrequencies[1]) - 1) / 3
            let expected = (1 - smooth) * plain.inverseFrequencies[1] / 8 + smooth * plain.inverseFrequencies[1]
            #expect(abs(tables.inverseFrequencies[1] - expected) < 1e-15)
        }
    }
}
