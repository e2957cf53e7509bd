// Losses: distillation KL divergence and prediction entropy over logits rows — forward (the loss) and backward (∂/∂logits).
import Foundation

/// Σ_r w_r · KL(p_r ‖ q_r) with p = softmax(teacher/τ), q = softmax(student/τ), over `rows` rows of
/// `C` logits. Rows of weight 0 (padding) are skipped. Computed in double per row.
public func klDivergenceForward(
    student: UnsafePointer<Float>, teacher: UnsafePointer<Float>, rowWeights: [Float], C: Int, temperature: Float
) -> Double {
    var total = 0.0
    for row in rowWeights.indices where rowWeights[row] != 0 {
        let s = logSoftmax(student + row * C, C: C, temperature: temperature)
        let t = logSoftmax(teacher + row * C, C: C, temperature: temperature)
        var kl = 0.0
        for c in 0..<C { kl += exp(t[c]) * (t[c] - s[c]) }
        total += Double(rowWeights[row]) * kl
    }
    return total
}

/// dstudent = w_r · (q − p) / τ: the gradient of `klDivergenceForward` with respect to the student's logits.
public func klDivergenceBackward(
    dstudent: UnsafeMutablePointer<Float>, student: UnsafePointer<Float>, teacher: UnsafePointer<Float>,
    rowWeights: [Float], C: Int, temperature: Float
) {
    for row in rowWeights.indices {
        let d = dstudent + row * C
        guard rowWeights[row] != 0 else { d.update(repeating: 0, count: C); continue }
        let s = logSoftmax(student + row * C, C: C, temperature: temperature)
        let t = logSoftmax(teacher + row * C, C: C, temperature: temperature)
        let scale = Double(rowWeights[row]) / Double(temperature)
        for c in 0..<C { d[c] = Float(scale * (exp(s[c]) - exp(t[c]))) }
    }
}

/// Σ_r w_r · H(q_r), q = softmax(logits), H = −Σ q log q: AdaMerging's objective.
public func entropyForward(_ logits: UnsafePointer<Float>, rowWeights: [Float], C: Int) -> Double {
    var total = 0.0
    for row in rowWeights.indices where rowWeights[row] != 0 {
        let l = logSoftmax(logits + row * C, C: C, temperature: 1)
        var h = 0.0
        for c in 0..<C { h -= exp(l[c]) * l[c] }
        total += Double(rowWeights[row]) * h
    }
    return total
}

/// dlogits = −w_r · q ⊙ (log q + H): the gradient of `entropyForward`.
public func entropyBackward(dlogits: UnsafeMutablePointer<Float>, _ logits: UnsafePointer<Float>, rowWeights: [Float], C: Int) {
    for row in rowWeights.indices {
        let d = dlogits + row * C
        guard rowWeights[row] != 0 else { d.update(repeating: 0, count: C); continue }
        let l = logSoftmax(logits + row * C, C: C, temperature: 1)
        var h = 0.0
        for c in 0..<C { h -= exp(l[c]) * l[c] }
        let w = Double(rowWeights[row])
        for c in 0..<C { d[c] = Float(-w * exp(l[c]) * (l[c] + h)) }
    }
}

/// log softmax(x/τ) of one row, in double, shifted by the maximum so large logits cannot overflow.
private func logSoftmax(_ x: UnsafePointer<Float>, C: Int, temperature: Float) -> [Double] {
    let scaled = (0..<C).map { Double(x[$0]) / Double(temperature) }
    let top = scaled.max() ?? 0
    let logSum = log(scaled.reduce(0) { $0 + exp($1 - top) }) + top
    return scaled.map { $0 - logSum }
}
