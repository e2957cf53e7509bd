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

    func forward(_ batch: TokenBatch) throws(ArchitectureError) -> Tensor {
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
        return out
    }
}

/// `pooler.dense`: tanh(dense(hidden state of the first token)), [B, H].
func bertPooler(_ hidden: Tensor, weights: LayerWeights, config: ArchitectureConfig, B: Int, S: Int) throws(ArchitectureError) -> Tensor {
    let H = config.hidden
    let w = try weights.require("pooler.dense.weight", [H, H]), bias = try weights.require("pooler.dense.bias", [H])
    let first = Tensor(shape: [B, H])
    for b in 0..<B { (first.data + b * H).update(from: hidden.data + b * S * H, count: H) }
    let out = linear(first, w, bias, rows: B)
    for i in 0..<out.count { out.data[i] = Foundation.tanh(out.data[i]) }
    return out
}
