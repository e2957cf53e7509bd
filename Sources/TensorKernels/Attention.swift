// Attention: scaled dot-product attention over heads (multi-head and grouped-query), padding and causal masks — forward and backward.

/// Sizes of one attention call. q is [B, S, heads·headDim]; k and v are [B, S, kvHeads·headDim],
/// each group of heads/kvHeads query heads sharing one key/value head (grouped-query attention).
public struct AttentionShape: Sendable, Equatable {
    public var B: Int, S: Int, heads: Int, kvHeads: Int, headDim: Int

    public init(B: Int, S: Int, heads: Int, kvHeads: Int, headDim: Int) {
        precondition(heads % kvHeads == 0, "attention: \(heads) heads are not a multiple of \(kvHeads) key/value heads")
        self.B = B; self.S = S; self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
    }

    /// Elements of the saved probabilities [B, heads, S, S].
    public var probabilityCount: Int { B * heads * S * S }
}

/// ctx [B, S, heads·headDim] = softmax(q·kᵀ/√headDim + mask)·v per head; saves the probabilities
/// [B, heads, S, S] for backward. A key whose `keyMask` entry is 0 (padding) is masked, and with
/// `causal` every key after the query too. Masked scores are set to −greatestFiniteMagnitude, as
/// transformers' additive float-min mask leaves them, so a fully masked row is uniform, not NaN.
public func attentionForward(
    _ ctx: UnsafeMutablePointer<Float>, probabilities: UnsafeMutablePointer<Float>,
    q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    keyMask: UnsafePointer<Int32>?, causal: Bool, shape: AttentionShape
) {
    let (S, d) = (shape.S, shape.headDim)
    let qStride = shape.heads * d, kvStride = shape.kvHeads * d, group = shape.heads / shape.kvHeads
    let scale = 1 / Float(d).squareRoot()
    // Every (sequence, head) pair is independent: spread them over the kernel threads.
    parallelFor(shape.B * shape.heads) { item in
        let (b, h) = item.quotientAndRemainder(dividingBy: shape.heads)
        let g = h / group
        let p = probabilities + item * S * S
        let qh = q + b * S * qStride + h * d, kg = k + b * S * kvStride + g * d, vg = v + b * S * kvStride + g * d
        sgemm(p, qh, kg, M: S, N: S, K: d, transposeB: true, alpha: scale, lda: qStride, ldb: kvStride, split: false)
        if let keyMask {
            for j in 0..<S where keyMask[b * S + j] == 0 {
                for i in 0..<S { p[i * S + j] = -Float.greatestFiniteMagnitude }
            }
        }
        if causal {
            for i in 0..<S { (p + i * S + i + 1).update(repeating: -Float.greatestFiniteMagnitude, count: S - i - 1) }
        }
        softmaxForward(p, p, rows: S, C: S)
        sgemm(ctx + b * S * qStride + h * d, p, vg, M: S, N: d, K: S, ldb: kvStride, ldc: qStride, split: false)
    }
}

/// Accumulates dq, dk, dv from dctx and the saved probabilities. Per head, with P the probabilities:
/// dP = dctx·vᵀ, dv += Pᵀ·dctx, dScores = softmax′(dP), dq += dScores·k/√d, dk += dScoresᵀ·q/√d.
/// Masked entries have P = 0 and so receive no gradient, as the constant mask should.
public func attentionBackward(
    dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
    dctx: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    probabilities: UnsafePointer<Float>, shape: AttentionShape
) {
    let (S, d) = (shape.S, shape.headDim)
    let qStride = shape.heads * d, kvStride = shape.kvHeads * d, group = shape.heads / shape.kvHeads
    let scale = 1 / Float(d).squareRoot()
    // Heads sharing a key/value head accumulate into the same dk and dv: one item per (sequence,
    // key/value head), its query heads in order, so the sums do not depend on the thread count.
    parallelFor(shape.B * shape.kvHeads) { item in
        let (b, g) = item.quotientAndRemainder(dividingBy: shape.kvHeads)
        let dScores = UnsafeMutablePointer<Float>.allocate(capacity: S * S)
        defer { dScores.deallocate() }
        for h in g * group..<(g + 1) * group {
            let p = probabilities + (b * shape.heads + h) * S * S
            let qOffset = b * S * qStride + h * d, kvOffset = b * S * kvStride + g * d
            sgemm(dScores, dctx + qOffset, v + kvOffset, M: S, N: S, K: d, transposeB: true, lda: qStride, ldb: kvStride, split: false)
            sgemm(dv + kvOffset, p, dctx + qOffset, M: S, N: d, K: S, transposeA: true, beta: 1, ldb: qStride, ldc: kvStride, split: false)
            softmaxBackward(dinp: dScores, dout: dScores, probabilities: p, rows: S, C: S)
            sgemm(dq + qOffset, dScores, k + kvOffset, M: S, N: d, K: S, alpha: scale, beta: 1, ldb: kvStride, ldc: qStride, split: false)
            sgemm(dk + kvOffset, dScores, q + qOffset, M: S, N: d, K: S, transposeA: true, alpha: scale, beta: 1, ldb: qStride, ldc: kvStride, split: false)
        }
    }
}
