// Softmax over the last dimension of [rows, C] — forward and backward, shared by attention and the logit losses.
import Foundation

/// out (rows, C) = softmax(inp) per row, max-subtracted so large scores do not overflow.
/// A row whose every entry carries the additive mask (−greatestFiniteMagnitude) becomes uniform,
/// as in transformers, rather than NaN.
public func softmaxForward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, rows: Int, C: Int) {
    for row in 0..<rows {
        let x = inp + row * C, y = out + row * C
        var maxValue = -Float.infinity
        for i in 0..<C { maxValue = max(maxValue, x[i]) }
        var sum: Float = 0
        for i in 0..<C {
            let e = Foundation.exp(x[i] - maxValue)
            y[i] = e
            sum += e
        }
        let inverse = 1 / sum
        for i in 0..<C { y[i] *= inverse }
    }
}

/// dinp (rows, C) = p · (dout − Σ dout·p) per row, from the softmax output p. Overwrites dinp (the
/// attention scores' gradient has no other contribution); may alias dout.
public func softmaxBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, probabilities p: UnsafePointer<Float>, rows: Int, C: Int) {
    for row in 0..<rows {
        let dy = dout + row * C, y = p + row * C, dx = dinp + row * C
        var dot: Float = 0
        for i in 0..<C { dot += dy[i] * y[i] }
        for i in 0..<C { dx[i] = y[i] * (dy[i] - dot) }
    }
}
