// LayerNorm: torch.nn.LayerNorm over the last dimension — forward (saving mean and 1/σ) and backward.

/// out (B, C) = (inp − mean) · rstd · weight + bias per row; saves mean (B) and rstd (B) for backward.
public func layerNormForward(
    _ out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>,
    _ inp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ bias: UnsafePointer<Float>, B: Int, C: Int, eps: Float
) {
    for row in 0..<B {
        let x = inp + row * C, y = out + row * C
        // Two passes (mean, then variance about it) as torch does, not E[x²] − E[x]², which cancels badly.
        var sum: Float = 0
        for i in 0..<C { sum += x[i] }
        let m = sum / Float(C)
        var variance: Float = 0
        for i in 0..<C { variance += (x[i] - m) * (x[i] - m) }
        let s = 1 / (variance / Float(C) + eps).squareRoot()
        for i in 0..<C { y[i] = (x[i] - m) * s * weight[i] + bias[i] }
        mean[row] = m
        rstd[row] = s
    }
}

/// Accumulates dinp, dweight, dbias from dout, using the mean and rstd saved by the forward pass.
public func layerNormBackward(
    dinp: UnsafeMutablePointer<Float>, dweight: UnsafeMutablePointer<Float>, dbias: UnsafeMutablePointer<Float>,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
    mean: UnsafePointer<Float>, rstd: UnsafePointer<Float>, B: Int, C: Int
) {
    for row in 0..<B {
        let x = inp + row * C, dy = dout + row * C, dx = dinp + row * C
        let m = mean[row], s = rstd[row]
        // dx = s · (g − mean(g) − x̂ · mean(g · x̂)) with g = dy · weight and x̂ the normalised input.
        var meanG: Float = 0, meanGX: Float = 0
        for i in 0..<C {
            let xhat = (x[i] - m) * s
            let g = dy[i] * weight[i]
            meanG += g
            meanGX += g * xhat
        }
        meanG /= Float(C)
        meanGX /= Float(C)
        for i in 0..<C {
            let xhat = (x[i] - m) * s
            dbias[i] += dy[i]
            dweight[i] += dy[i] * xhat
            dx[i] += s * (dy[i] * weight[i] - meanG - xhat * meanGX)
        }
    }
}
