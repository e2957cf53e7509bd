// LlamaModel: Llama-family token embeddings, final RMSNorm and the LM head (tied or not).
import TensorKernels

/// `embed_tokens`: a table lookup, [B·S, H].
func llamaEmbed(_ batch: TokenBatch, weights: LayerWeights, config: ArchitectureConfig) throws(ArchitectureError) -> Tensor {
    let table = try weights.require("embed_tokens.weight", [config.vocabulary, config.hidden])
    let out = Tensor(shape: [batch.rows, config.hidden])
    embeddingForward(out.data, ids: batch.inputIDs, table: table.data, N: batch.rows, C: config.hidden)
    return out
}

/// `norm`: the final RMSNorm over every position.
func llamaFinalNorm(_ hidden: Tensor, weights: LayerWeights, config: ArchitectureConfig) throws(ArchitectureError) -> Tensor {
    try llamaFinalNormWithRstd(hidden, weights: weights, config: config).output
}

/// The final RMSNorm's output and its per-row 1/rms, which the backward pass needs.
func llamaFinalNormWithRstd(_ hidden: Tensor, weights: LayerWeights, config: ArchitectureConfig) throws(ArchitectureError) -> (output: Tensor, rstd: Tensor) {
    let H = config.hidden, N = hidden.count / H
    let w = try weights.require("norm.weight", [H])
    let out = Tensor(shape: [N, H]), rstd = Tensor(shape: [N])
    rmsNormForward(out.data, rstd: rstd.data, hidden.data, w.data, B: N, C: H, eps: config.normEps)
    return (out, rstd)
}
