// ModelEnds: the differentiable ends of a model around its blocks — embeddings in, head features out — for end-to-end gradients.
import TensorKernels

/// The embeddings' output for one batch and what their backward pass needs (BERT: the sum before
/// LayerNorm, its statistics and the position ids; Llama: only the token ids).
public final class EmbeddingTape {
    public let batch: TokenBatch
    public let output: Tensor
    let sum: Tensor?, mean: Tensor?, rstd: Tensor?
    let positions: [Int32]

    init(batch: TokenBatch, output: Tensor, sum: Tensor? = nil, mean: Tensor? = nil, rstd: Tensor? = nil, positions: [Int32] = []) {
        self.batch = batch; self.output = output; self.sum = sum; self.mean = mean; self.rstd = rstd; self.positions = positions
    }
}

/// What a task head reads from the encoder (BERT family): the pooler's output, the first token's
/// hidden state, or the mean over real tokens. Decoders apply their LM head to every position.
public enum HeadPooling: String, Sendable, CaseIterable { case cls, mean, pooler }

/// The head's input for one batch — [B, H] for an encoder, [B·S, H] after the final norm for a
/// decoder — with the loss weight of each row and what the backward pass needs.
public final class OutputTape {
    public let features: Tensor
    /// 1/B per example (encoders); 1/(real tokens) per real position and 0 on padding (decoders).
    public let rowWeights: [Float]
    let lastHidden: Tensor, batch: TokenBatch, pooling: HeadPooling?
    let rstd: Tensor?

    init(features: Tensor, rowWeights: [Float], lastHidden: Tensor, batch: TokenBatch, pooling: HeadPooling?, rstd: Tensor? = nil) {
        self.features = features; self.rowWeights = rowWeights; self.lastHidden = lastHidden
        self.batch = batch; self.pooling = pooling; self.rstd = rstd
    }
}

extension Architecture {
    /// The embeddings output [B·S, H] with its tape.
    public func embedForward(_ batch: TokenBatch, weights: LayerWeights) throws(ArchitectureError) -> EmbeddingTape {
        switch config.family {
        case .bert: return try BertEmbeddings(weights: weights, config: config).forwardWithTape(batch)
        case .llama: return EmbeddingTape(batch: batch, output: try llamaEmbed(batch, weights: weights, config: config))
        }
    }

    /// Accumulates the embedding tables' (and BERT's LayerNorm's) gradients from dout [B·S, H].
    public func embedBackward(_ tape: EmbeddingTape, dout: Tensor, weights: LayerWeights, gradients: LayerWeights) throws(ArchitectureError) {
        switch config.family {
        case .bert: try BertEmbeddings(weights: weights, config: config).backward(tape, dout: dout, gradients: gradients)
        case .llama:
            embeddingBackward(dtable: gradients["embed_tokens.weight"]!.data, dout: dout.data, ids: tape.batch.inputIDs,
                              N: tape.batch.rows, C: config.hidden)
        }
    }

    /// The head's input from the last block's output: pooled for BERT (`pooling`), the final RMSNorm
    /// for the Llama family.
    public func outputForward(_ last: Tensor, final: LayerWeights, batch: TokenBatch, pooling: HeadPooling) throws(ArchitectureError) -> OutputTape {
        let (B, S, H) = (batch.B, batch.S, config.hidden)
        switch config.family {
        case .llama:
            let (features, rstd) = try llamaFinalNormWithRstd(last, weights: final, config: config)
            let real = Float(batch.attentionMask.reduce(0) { $0 + Int($1) })
            return OutputTape(features: features, rowWeights: batch.attentionMask.map { Float($0) / real },
                              lastHidden: last, batch: batch, pooling: nil, rstd: rstd)
        case .bert:
            let features: Tensor
            switch pooling {
            case .pooler:
                guard final["pooler.dense.weight"] != nil else {
                    throw .missingTensor(path: final.origin, tensor: "pooler.dense.weight (head_pooling: pooler)")
                }
                features = try bertPooler(last, weights: final, config: config, B: B, S: S)
            case .cls: features = firstTokens(last, B: B, S: S, H: H)
            case .mean:
                features = Tensor(shape: [B, H])
                for b in 0..<B {
                    let count = Float(batch.attentionMask[(b * S)..<((b + 1) * S)].reduce(0) { $0 + Int($1) })
                    for s in 0..<S where batch.attentionMask[b * S + s] == 1 {
                        for h in 0..<H { features.data[b * H + h] += last.data[(b * S + s) * H + h] / count }
                    }
                }
            }
            return OutputTape(features: features, rowWeights: [Float](repeating: 1 / Float(B), count: B),
                              lastHidden: last, batch: batch, pooling: pooling)
        }
    }

    /// The gradient with respect to the last block's output from dfeatures, accumulating the final
    /// layers' weight gradients (pooler or final norm) into `gradients`.
    public func outputBackward(_ tape: OutputTape, dfeatures: Tensor, final: LayerWeights, gradients: LayerWeights) -> Tensor {
        let batch = tape.batch
        let (B, S, H) = (batch.B, batch.S, config.hidden)
        let dlast = Tensor(shape: [B * S, H])
        switch (config.family, tape.pooling) {
        case (.llama, _):
            rmsNormBackward(dinp: dlast.data, dweight: gradients["norm.weight"]!.data, dout: dfeatures.data, inp: tape.lastHidden.data,
                            weight: final["norm.weight"]!.data, rstd: tape.rstd!.data, B: B * S, C: H)
        case (.bert, .pooler?):
            bertPoolerBackward(dhidden: dlast, dout: dfeatures, output: tape.features, hidden: tape.lastHidden, weights: final,
                               gradients: gradients, B: B, S: S)
        case (.bert, .mean?):
            for b in 0..<B {
                let count = Float(batch.attentionMask[(b * S)..<((b + 1) * S)].reduce(0) { $0 + Int($1) })
                for s in 0..<S where batch.attentionMask[b * S + s] == 1 {
                    for h in 0..<H { dlast.data[(b * S + s) * H + h] = dfeatures.data[b * H + h] / count }
                }
            }
        case (.bert, _):
            for b in 0..<B { (dlast.data + b * S * H).update(from: dfeatures.data + b * H, count: H) }
        }
        return dlast
    }
}
