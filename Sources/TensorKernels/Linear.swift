// Linear: y = x·Wᵀ + b with W [OC, C] as torch.nn.Linear stores it — forward and backward.

/// out (B, OC) = inp (B, C) · weightᵀ (C, OC) + bias (OC); B counts every row (batch × tokens).
public func linearForward(
    _ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>,
    _ bias: UnsafePointer<Float>?, B: Int, C: Int, OC: Int
) {
    if let bias {
        // Seed every row with the bias, then let sgemm accumulate onto it (beta 1).
        for row in 0..<B { (out + row * OC).update(from: bias, count: OC) }
    }
    sgemm(out, inp, weight, M: B, N: OC, K: C, transposeB: true, beta: bias == nil ? 0 : 1)
}

/// Accumulates dinp (B, C) += dout · W, dweight (OC, C) += doutᵀ · inp, dbias (OC) += Σ_rows dout.
public func linearBackward(
    dinp: UnsafeMutablePointer<Float>?, dweight: UnsafeMutablePointer<Float>?, dbias: UnsafeMutablePointer<Float>?,
    dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>, B: Int, C: Int, OC: Int
) {
    if let dinp { sgemm(dinp, dout, weight, M: B, N: C, K: OC, beta: 1) }
    if let dweight { sgemm(dweight, dout, inp, M: OC, N: C, K: B, transposeA: true, beta: 1) }
    if let dbias {
        for row in 0..<B {
            let d = dout + row * OC
            for o in 0..<OC { dbias[o] += d[o] }
        }
    }
}
