// KernelGradientTests: each kernel's backward against central finite differences of its forward,
// and the sgemm-backed linear against a naive double-precision loop.
import Testing
import TensorKernels
import TestSupport

@Suite("Kernel gradients")
struct KernelGradientTests {
    let B = 5, C = 7, OC = 4

    @Test("linear forward equals a naive loop; backward matches finite differences")
    func linear() {
        var x = testValues(B * C, seed: 1), w = testValues(OC * C, seed: 2), b = testValues(OC, seed: 3)
        let g = testValues(B * OC, seed: 4)
        func forward(_ x: [Float], _ w: [Float], _ b: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: B * OC)
            linearForward(&out, x, w, b, B: B, C: C, OC: OC)
            return out
        }
        let out = forward(x, w, b)
        for row in 0..<B {
            for o in 0..<OC {
                var expected = Double(b[o])
                for i in 0..<C { expected += Double(x[row * C + i]) * Double(w[o * C + i]) }
                #expect(abs(Double(out[row * OC + o]) - expected) < 1e-5)
            }
        }
        var dx = [Float](repeating: 0, count: B * C), dw = [Float](repeating: 0, count: OC * C), db = [Float](repeating: 0, count: OC)
        linearBackward(dinp: &dx, dweight: &dw, dbias: &db, dout: g, inp: x, weight: w, B: B, C: C, OC: OC)
        let (wx, ww, wb) = (w, b, x)
        #expect(gradientError(dx, numericGradient(&x) { dot(forward($0, wx, ww), g) }) < 2e-3)
        #expect(gradientError(dw, numericGradient(&w) { dot(forward(wb, $0, ww), g) }) < 2e-3)
        #expect(gradientError(db, numericGradient(&b) { dot(forward(wb, wx, $0), g) }) < 2e-3)
    }

    @Test("LayerNorm backward matches finite differences for input, weight and bias")
    func layerNorm() {
        var x = testValues(B * C, seed: 5, scale: 2), w = testValues(C, seed: 6).map { $0 + 1 }, b = testValues(C, seed: 7)
        let g = testValues(B * C, seed: 8)
        var mean = [Float](repeating: 0, count: B), rstd = [Float](repeating: 0, count: B)
        func forward(_ x: [Float], _ w: [Float], _ b: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: B * C)
            layerNormForward(&out, mean: &mean, rstd: &rstd, x, w, b, B: B, C: C, eps: 1e-5)
            return out
        }
        _ = forward(x, w, b)
        var dx = [Float](repeating: 0, count: B * C), dw = [Float](repeating: 0, count: C), db = [Float](repeating: 0, count: C)
        layerNormBackward(dinp: &dx, dweight: &dw, dbias: &db, dout: g, inp: x, weight: w, mean: mean, rstd: rstd, B: B, C: C)
        let (sx, sw, sb) = (x, w, b)
        #expect(gradientError(dx, numericGradient(&x, step: 1e-3) { dot(forward($0, sw, sb), g) }) < 5e-3)
        #expect(gradientError(dw, numericGradient(&w) { dot(forward(sx, $0, sb), g) }) < 2e-3)
        #expect(gradientError(db, numericGradient(&b) { dot(forward(sx, sw, $0), g) }) < 2e-3)
    }

    @Test("GELU (erf and tanh) and SiLU backward match finite differences",
          arguments: ["gelu-erf", "gelu-tanh", "silu"])
    func activations(kind: String) {
        var x = testValues(40, seed: 9, scale: 3)
        let g = testValues(40, seed: 10)
        func forward(_ x: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: x.count)
            switch kind {
            case "gelu-erf": geluForward(&out, x, N: x.count, form: .erf)
            case "gelu-tanh": geluForward(&out, x, N: x.count, form: .tanh)
            default: siluForward(&out, x, N: x.count)
            }
            return out
        }
        var dx = [Float](repeating: 0, count: 40)
        switch kind {
        case "gelu-erf": geluBackward(dinp: &dx, dout: g, inp: x, N: 40, form: .erf)
        case "gelu-tanh": geluBackward(dinp: &dx, dout: g, inp: x, N: 40, form: .tanh)
        default: siluBackward(dinp: &dx, dout: g, inp: x, N: 40)
        }
        #expect(gradientError(dx, numericGradient(&x, step: 1e-3) { dot(forward($0), g) }) < 5e-3)
    }

    @Test("GELU forms take their known values")
    func geluValues() {
        var out = [Float](repeating: 0, count: 2)
        geluForward(&out, [1, -2], N: 2, form: .erf)
        // 0.5·x·(1 + erf(x/√2)) at 1 and −2, from the closed form.
        #expect(abs(out[0] - 0.8413447) < 1e-6 && abs(out[1] - -0.04550026) < 1e-6)
    }
}
