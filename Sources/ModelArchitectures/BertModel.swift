// BertModel: BERT/RoBERTa embeddings (word + position + token type, LayerNorm) and the pooler.
import Foundation
import TensorKernels

/// `embeddings.*` of the BERT family. RoBERTa numbers positions from padding_idx + 1 over the
/// non-padding tokens (transformers' create_position_ids_from_input_ids); BERT uses 0..<S.
struct BertEmbeddings {
    let config: ArchitectureConfig
    let word, position, tokenType, normWeight, normBias: Tensor

    init(weights: LayerWeights, config: ArchitectureConfig) throws(ArchitectureError) {
        self.config = config
        let H = config.hidden
        word = try weights.require("embeddings.word_embeddings.weight", [config.vocabulary, H])
        position = try weights.require("embeddings.position_embeddings.weight", [config.maxPositions, H])
        tokenType = try weights.require("embeddings.token_type_embeddings.weight", [max(config.typeVocabulary, 1), H])
        normWeight = try weights.require("embeddings.LayerNorm.weight", [H])
        normBias = try weights.require("embeddings.LayerNorm.bias", [H])
    }

    func positionIDs(_ batch: TokenBatch) -> [Int32] {
        guard config.positionsFromPadding else { return (0..<batch.rows).map { Int32($0 % batch.S) } }
        let pad = Int32(config.padTokenID)
        var ids = [Int32](repeating: pad, count: batch.rows)
        for b in 0..<batch.B {
            var count: Int32 = 0
            for s in 0..<batch.S where batch.inputIDs[b * batch.S + s] != pad {
                count += 1
                ids[b * batch.S + s] = pad + count
            }
        }
        return ids
    }

    func forward(_ batch: TokenBatch) throws(ArchitectureError) -> Tensor { try forwardWithTape(batch).output }

    /// The embeddings output and what `backward` needs: the summed embeddings before LayerNorm,
    /// its mean and 1/σ, and the position ids.
    func forwardWithTape(_ batch: TokenBatch) throws(ArchitectureError) -> EmbeddingTape {
        let (N, H) = (batch.rows, config.hidden)
        let positions = positionIDs(batch)
        if let bad = positions.first(where: { Int($0) >= config.maxPositions }) {
            throw .badInput(path: "input", detail: "position \(bad) exceeds max_position_embeddings \(config.maxPositions)")
        }
        if let bad = batch.tokenTypeIDs.first(where: { Int($0) >= max(config.typeVocabulary, 1) }) {
            throw .badInput(path: "input", detail: "token type \(bad) exceeds type_vocab_size \(config.typeVocabulary)")
        }
        let sum = Tensor(shape: [N, H])
        embeddingForward(sum.data, ids: batch.inputIDs, table: word.data, N: N, C: H)
        embeddingForward(sum.data, ids: positions, table: position.data, N: N, C: H)
        embeddingForward(sum.data, ids: batch.tokenTypeIDs, table: tokenType.data, N: N, C: H)
        let out = Tensor(shape: [N, H]), mean = Tensor(shape: [N]), rstd = Tensor(shape: [N])
        layerNormForward(out.data, mean: mean.data, rstd: rstd.data, sum.data, normWeight.data, normBias.data, B: N, C: H, eps: config.normEps)
        return EmbeddingTape(batch: batch, output: out, sum: sum, mean: mean, rstd: rstd, positions: positions)
    }

    /// Accumulates the gradients of the three tables and the LayerNorm from dout [B·S, H].
    func backward(_ tape: EmbeddingTape, dout: Tensor, gradients g: LayerWeights) {
        let (N, H) = (tape.batch.rows, config.hidden)
        let dsum = Tensor(shape: [N, H])
        layerNormBackward(dinp: dsum.data, dweight: g["embeddings.LayerNorm.weight"]!.data, dbias: g["embeddings.LayerNorm.bias"]!.data,
                          dout: dout.data, inp: tape.sum!.data, weight: normWeight.data, mean: tape.mean!.data, rstd: tape.rstd!.data, B: N, C: H)
        embeddingBackward(dtable: g["embeddings.word_embeddings.weight"]!.data, dout: dsum.data, ids: tape.batch.inputIDs, N: N, C: H)
        embeddingBackward(dtable: g["embeddings.position_embeddings.weight"]!.data, dout: dsum.data, ids: tape.positions, N: N, C: H)
        embeddingBackward(dtable: g["embeddings.token_type_embeddings.weight"]!.data, dout: dsum.data, ids: tape.batch.tokenTypeIDs, N: N, C: H)
    }
}

/// `pooler.dense`: tanh(dense(hidden state of the first token)), [B, H].
func bertPooler(_ hidden: Tensor, weights: LayerWeights, config: ArchitectureConfig, B: Int, S: Int) throws(ArchitectureError) -> Tensor {
    let H = config.hidden
    let w = try weights.require("pooler.dense.weight", [H, H]), bias = try weights.require("pooler.dense.bias", [H])
    let out = linear(firstTokens(hidden, B: B, S: S, H: H), w, bias, rows: B)
    for i in 0..<out.count { out.data[i] = Foundation.tanh(out.data[i]) }
    return out
}

/// Backward of `bertPooler` from dout [B, H] (its output y): dense gradients into `g`, and the first
/// tokens' gradient added to dhidden [B·S, H].
func bertPoolerBackward(dhidden: Tensor, dout: Tensor, output y: Tensor, hidden: Tensor, weights: LayerWeights, gradients g: LayerWeights, B: Int, S: Int) {
    let H = dout.shape[1]
    let dpre = Tensor(shape: [B, H]), dfirst = Tensor(shape: [B, H])
    for i in 0..<dpre.count { dpre.data[i] = dout.data[i] * (1 - y.data[i] * y.data[i]) }
    let first = firstTokens(hidden, B: B, S: S, H: H)
    withExtendedLifetime((first, dpre)) {
        linearBackward(dinp: dfirst.data, dweight: g["pooler.dense.weight"]!.data, dbias: g["pooler.dense.bias"]!.data, dout: dpre.data,
                       inp: first.data, weight: weights["pooler.dense.weight"]!.data, B: B, C: H, OC: H)
    }
    for b in 0..<B { addInPlace(dhidden.data + b * S * H, dfirst.data + b * H, N: H) }
}

/// The hidden state of each sequence's first token ([CLS]), [B, H].
func firstTokens(_ hidden: Tensor, B: Int, S: Int, H: Int) -> Tensor {
    let first = Tensor(shape: [B, H])
    for b in 0..<B { (first.data + b * H).update(from: hidden.data + b * S * H, count: H) }
    return first
}
