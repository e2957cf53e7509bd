// LossGradientTests: distillation KL and prediction entropy — backward against finite differences, and DESIGN.md's identities.
import Foundation
import Testing
import TensorKernels
import TestSupport

@Suite("Loss gradients")
struct LossGradientTests {
    let rows = 4, C = 6
    /// Row weights with a skipped (padding) row.
    let weights: [Float] = [0.5, 0, 0.25, 1]

    @Test("KL(teacher ‖ student) at temperature 2: backward matches finite differences; padding rows get no gradient")
    func klDivergence() {
        var student = testValues(rows * C, seed: 11, scale: 3)
        let teacher = testValues(rows * C, seed: 12, scale: 3)
        var d = zeros(rows * C)
        klDivergenceBackward(dstudent: &d, student: student, teacher: teacher, rowWeights: weights, C: C, temperature: 2)
        let numeric = numericGradient(&student, step: 1e-2) {
            klDivergenceForward(student: $0, teacher: teacher, rowWeights: weights, C: C, temperature: 2)
        }
        #expect(gradientError(d, numeric) < 2e-3)
        #expect(d[C..<(2 * C)].allSatisfy { $0 == 0 })
        #expect(klDivergenceForward(student: student, teacher: teacher, rowWeights: weights, C: C, temperature: 2) > 0)
    }

    @Test("KL of identical logits is 0, also shifted by a constant (softmax invariance)")
    func klIdentity() {
        let logits = testValues(rows * C, seed: 13, scale: 5)
        #expect(klDivergenceForward(student: logits, teacher: logits, rowWeights: weights, C: C, temperature: 2) == 0)
        let shifted = logits.map { $0 + 100 }
        #expect(abs(klDivergenceForward(student: shifted, teacher: logits, rowWeights: weights, C: C, temperature: 2)) < 1e-9)
    }

    @Test("entropy: backward matches finite differences; uniform logits over C classes give log C")
    func entropy() {
        var logits = testValues(rows * C, seed: 14, scale: 3)
        var d = zeros(rows * C)
        entropyBackward(dlogits: &d, logits, rowWeights: weights, C: C)
        let numeric = numericGradient(&logits, step: 1e-2) { entropyForward($0, rowWeights: weights, C: C) }
        #expect(gradientError(d, numeric) < 2e-3)
        let uniform = [Float](repeating: 0.7, count: C)
        #expect(abs(entropyForward(uniform, rowWeights: [1], C: C) - log(Double(C))) < 1e-12)
    }
}
