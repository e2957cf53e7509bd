// AttentionGradientTests: attention against a naive double-precision loop, its masks, and finite differences of q, k and v.
import Foundation
import Testing
import TensorKernels
import TestSupport

@Suite("Attention")
struct AttentionGradientTests {
    // Grouped-query: 4 query heads over 2 key/value heads; example 1 has 2 padded positions.
    let shape = AttentionShape(B: 2, S: 5, heads: 4, kvHeads: 2, headDim: 3)
    let keyMask: [Int32] = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]

    func forward(_ q: [Float], _ k: [Float], _ v: [Float], causal: Bool) -> (ctx: [Float], probabilities: [Float]) {
        var ctx = zeros(shape.B * shape.S * shape.heads * shape.headDim), p = zeros(shape.probabilityCount)
        attentionForward(&ctx, probabilities: &p, q: q, k: k, v: v, keyMask: keyMask, causal: causal, shape: shape)
        return (ctx, p)
    }

    /// The textbook definition, in double, looping over everything.
    func naive(_ q: [Float], _ k: [Float], _ v: [Float], causal: Bool) -> [Double] {
        let (S, d, H, KV) = (shape.S, shape.headDim, shape.heads, shape.kvHeads)
        var out = [Double](repeating: 0, count: q.count)
        for b in 0..<shape.B {
            for h in 0..<H {
                let g = h / (H / KV)
                for i in 0..<S {
                    var scores = (0..<S).map { j -> Double in
                        (0..<d).reduce(0.0) { $0 + Double(q[((b * S + i) * H + h) * d + $1]) * Double(k[((b * S + j) * KV + g) * d + $1]) } / Double(d).squareRoot()
                    }
                    for j in 0..<S where (causal && j > i) || keyMask[b * S + j] == 0 { scores[j] = -.infinity }
                    let m = scores.max()!, e = scores.map { exp($0 - m) }, total = e.reduce(0, +)
                    for j in 0..<S {
                        for c in 0..<d { out[((b * S + i) * H + h) * d + c] += e[j] / total * Double(v[((b * S + j) * KV + g) * d + c]) }
                    }
                }
            }
        }
        return out
    }

    @Test("forward equals the naive definition; padded keys and (causal) future keys change nothing", arguments: [false, true])
    func forwardAndMasks(causal: Bool) {
        let q = testValues(2 * 5 * 4 * 3, seed: 31, scale: 2), k = testValues(2 * 5 * 2 * 3, seed: 32, scale: 2)
        var v = testValues(2 * 5 * 2 * 3, seed: 33)
        let ctx = forward(q, k, v, causal: causal).ctx
        for (a, b) in zip(ctx, naive(q, k, v, causal: causal)) { #expect(abs(Double(a) - b) < 1e-6) }
        // Scramble the values at example 1's padded positions 3 and 4: nothing may move.
        for t in 3..<5 { for c in 0..<6 { v[((5 + t) * 2) * 3 + c] = 100 } }
        #expect(forward(q, k, v, causal: causal).ctx == ctx)
        if causal {
            // Change the last token of example 0: every earlier query's output stays put.
            var k2 = k
            for c in 0..<6 { k2[(4 * 2) * 3 + c] += 5 }
            let moved = forward(q, k2, v, causal: true).ctx
            #expect(Array(moved[0..<4 * 12]) == Array(ctx[0..<4 * 12]))
        }
    }

    @Test("backward matches finite differences for q, k and v", arguments: [false, true])
    func backward(causal: Bool) {
        var q = testValues(2 * 5 * 4 * 3, seed: 34, scale: 2), k = testValues(2 * 5 * 2 * 3, seed: 35, scale: 2)
        var v = testValues(2 * 5 * 2 * 3, seed: 36)
        let g = testValues(q.count, seed: 37)
        let p = forward(q, k, v, causal: causal).probabilities
        var dq = zeros(q.count), dk = zeros(k.count), dv = zeros(v.count)
        attentionBackward(dq: &dq, dk: &dk, dv: &dv, dctx: g, q: q, k: k, v: v, probabilities: p, shape: shape)
        let (sq, sk, sv) = (q, k, v)
        #expect(gradientError(dq, numericGradient(&q, step: 1e-2) { dot(forward($0, sk, sv, causal: causal).ctx, g) }) < 5e-3)
        #expect(gradientError(dk, numericGradient(&k, step: 1e-2) { dot(forward(sq, $0, sv, causal: causal).ctx, g) }) < 5e-3)
        #expect(gradientError(dv, numericGradient(&v, step: 1e-2) { dot(forward(sq, sk, $0, causal: causal).ctx, g) }) < 5e-3)
    }
}
