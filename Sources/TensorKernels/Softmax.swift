// Softmax over the last dimension of [rows, C] — forward and backward, shared by attention and the logit losses.

/// out (rows, C) = softmax(inp) per row, max-subtracted so large scores do not overflow.
/// A row whose every entry carries the additive mask (−greatestFiniteMagnitude) becomes uniform,
/// as in transformers, rather than NaN.
public func softmaxForward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, rows: Int, C: Int) {
    for row in 0..<rows {
        let x = inp + row * C, y = out + row * C
        let maxValue = laneMax(x, C)
        for i in 0..<C { y[i] = fastExp(x[i] - maxValue) }
        let sum = laneSum(y, C)
        let inverse = 1 / sum
        for i in 0..<C { y[i] *= inverse }
    }
}

/// dinp (rows, C) = p · (dout − Σ dout·p) per row, from the softmax output p. Overwrites dinp (the
/// attention scores' gradient has no other contribution); may alias dout.
public func softmaxBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, probabilities p: UnsafePointer<Float>, rows: Int, C: Int) {
    for row in 0..<rows {
        let dy = dout + row * C, y = p + row * C, dx = dinp + row * C
        let dot = laneDot(dy, y, C)
        for i in 0..<C { dx[i] = y[i] * (dy[i] - dot) }
    }
}
