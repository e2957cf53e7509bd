// Architecture: one runnable model family behind a single interface — embeddings, blocks, final layers.
import SafetensorsFormat
import TensorKernels

/// What a streamed pass needs from a model family: build the embeddings, each block and the final
/// layers from their weights, and the per-batch context (masks, RoPE tables) blocks share.
public struct Architecture: Sendable {
    public let config: ArchitectureConfig

    public init(config: ArchitectureConfig) { self.config = config }

    /// The architecture of a model directory, from its config.json.
    public init(source: ModelSource) throws(ArchitectureError) {
        guard let json = source.config else {
            throw .invalidConfig(path: source.path, detail: "no config.json: the architecture cannot be determined")
        }
        config = try ArchitectureConfig(json, path: (source.directory ?? source.path) + "/config.json")
    }

    public func context(for batch: TokenBatch) -> BlockContext {
        let rope = config.family == .llama
            ? RoPETables(headDim: config.headDim, positions: batch.S, theta: config.ropeTheta, scaling: config.ropeScaling)
            : nil
        return BlockContext(B: batch.B, S: batch.S, attentionMask: batch.attentionMask, rope: rope)
    }

    /// Checks the batch against the model before anything runs: ids inside the vocabulary, and
    /// sequences the Llama family's sliding window would change.
    public func validate(_ batch: TokenBatch, origin: String) throws(ArchitectureError) {
        if let bad = batch.inputIDs.first(where: { Int($0) >= config.vocabulary }) {
            throw .badInput(path: origin, detail: "token id \(bad) is outside the vocabulary of \(config.vocabulary)")
        }
        if let window = config.slidingWindow, batch.S > window {
            throw .badInput(path: origin, detail: "\(batch.S) tokens exceed the sliding window of \(window), which is not implemented")
        }
    }

    /// The embeddings output [B·S, H] (transformers' hidden_states[0]).
    public func embed(_ batch: TokenBatch, weights: LayerWeights) throws(ArchitectureError) -> Tensor {
        switch config.family {
        case .bert: try BertEmbeddings(weights: weights, config: config).forward(batch)
        case .llama: try llamaEmbed(batch, weights: weights, config: config)
        }
    }

    public func block(_ weights: LayerWeights) throws(ArchitectureError) -> TransformerBlock {
        switch config.family {
        case .bert: try BertBlock(weights: weights, config: config)
        case .llama: try LlamaBlock(weights: weights, config: config)
        }
    }

    /// transformers' last_hidden_state from the last block's output: the final RMSNorm for the
    /// Llama family, the block output itself for BERT.
    public func lastHiddenState(_ blockOutput: Tensor, final: LayerWeights) throws(ArchitectureError) -> Tensor {
        switch config.family {
        case .bert: blockOutput
        case .llama: try llamaFinalNorm(blockOutput, weights: final, config: config)
        }
    }

    /// BERT's pooler output [B, H] (nil for the Llama family or a model saved without a pooler).
    public func pooled(_ lastHidden: Tensor, final: LayerWeights, batch: TokenBatch) throws(ArchitectureError) -> Tensor? {
        guard config.family == .bert, final["pooler.dense.weight"] != nil else { return nil }
        return try bertPooler(lastHidden, weights: final, config: config, B: batch.B, S: batch.S)
    }
}

/// A classification or LM head: logits = x·Wᵀ + b with W [C, H].
public struct LinearHead: Sendable {
    public let weight: Tensor
    public let bias: Tensor?

    public init(weight: Tensor, bias: Tensor?) {
        self.weight = weight
        self.bias = bias
    }

    /// Reads a head file: tensors `weight` [C, H] and optional `bias` [C], or a single `<name>.weight`
    /// of rank 2 with its `<name>.bias` (how a merge writes heads/<model>.safetensors).
    public init(file: SafetensorsFile, hidden: Int) throws(ArchitectureError) {
        try self.init(entries: file.tensors.map { (file, $0) }, origin: file.path, hidden: hidden)
    }

    /// A fine-tune's own task-specific tensors `names` (e.g. `classifier.weight`, `classifier.bias`).
    public init(source: ModelSource, names: [String], hidden: Int) throws(ArchitectureError) {
        try self.init(entries: names.compactMap { source.tensor($0) }, origin: source.path, hidden: hidden)
    }

    private init(entries: [(SafetensorsFile, TensorInfo)], origin: String, hidden: Int) throws(ArchitectureError) {
        let matrices = entries.filter { $0.1.shape.count == 2 && ($0.1.name == "weight" || $0.1.name.hasSuffix(".weight")) }
        let chosen = matrices.first(where: { $0.1.name == "weight" }) ?? (matrices.count == 1 ? matrices[0] : nil)
        guard let (file, w) = chosen else {
            throw .badInput(path: origin, detail: "a head needs a 'weight' [classes, hidden] tensor (found \(entries.map(\.1.name)))")
        }
        guard w.shape[1] == hidden else {
            throw .badShape(path: origin, tensor: w.name, expected: [w.shape[0], hidden], actual: w.shape)
        }
        let biasName = w.name == "weight" ? "bias" : String(w.name.dropLast("weight".count)) + "bias"
        weight = Tensor(shape: w.shape)
        file.readFloats(w, elements: 0..<w.elementCount, into: weight.data)
        if let (biasFile, b) = entries.first(where: { $0.1.name == biasName }) {
            guard b.shape == [w.shape[0]] else { throw .badShape(path: origin, tensor: biasName, expected: [w.shape[0]], actual: b.shape) }
            let t = Tensor(shape: b.shape)
            biasFile.readFloats(b, elements: 0..<b.elementCount, into: t.data)
            bias = t
        } else {
            bias = nil
        }
    }

    /// logits [rows, C].
    public func apply(_ x: Tensor, rows: Int) -> Tensor { linear(x, weight, bias, rows: rows) }
}
