// RMSNorm: Llama's root-mean-square norm over the last dimension (no mean, no bias) — forward and backward.

/// out (B, C) = inp · rstd · weight per row, rstd = 1/√(mean(inp²) + eps); saves rstd (B).
/// Computed in f32 as transformers' LlamaRMSNorm does after upcasting.
public func rmsNormForward(
    _ out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
    _ inp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, B: Int, C: Int, eps: Float
) {
    for row in 0..<B {
        let x = inp + row * C, y = out + row * C
        var sumSquares: Float = 0
        for i in 0..<C { sumSquares += x[i] * x[i] }
        let s = 1 / (sumSquares / Float(C) + eps).squareRoot()
        for i in 0..<C { y[i] = weight[i] * (x[i] * s) }
        rstd[row] = s
    }
}

/// Accumulates dinp and dweight: with g = dout · weight, dx = s·g − x·s³·mean(g·x), dweight += dout·x·s.
public func rmsNormBackward(
    dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    rstd: UnsafePointer<Float>, B: Int, C: Int
) {
    for row in 0..<B {
        let x = inp + row * C, dy = dout + row * C, dx = dinp + row * C
        let s = rstd[row]
        var meanGX: Float = 0
        for i in 0..<C { meanGX += dy[i] * weight[i] * x[i] }
        meanGX /= Float(C)
        let correction = s * s * s * meanGX
        for i in 0..<C { dx[i] += s * dy[i] * weight[i] - x[i] * correction }
        if let dweight { for i in 0..<C { dweight[i] += dy[i] * x[i] * s } }
    }
}
