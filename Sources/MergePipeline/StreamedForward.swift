// StreamedForward: `forward` — run a model layer by layer over tokenized examples, writing hidden states as they are computed.
import FileIO
import Foundation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

public struct ForwardOptions: Sendable {
    public var model: String
    public var input: String
    public var output: String
    /// Also write hidden_state_0 … hidden_state_L, indexed like transformers' `hidden_states`.
    public var allLayers = false
    public var head: String? = nil
    /// Examples per block call: bounds the activations a block keeps, independently of N.
    public var batchSize = 8
    public var threads = 2

    public init(model: String, input: String, output: String) {
        self.model = model
        self.input = input
        self.output = output
    }
}

public struct ForwardSummary: Codable, Sendable {
    public var model_type: String
    public var examples: Int
    public var sequence_length: Int
    public var blocks: Int
    public var tensors: [String]
    public var seconds: Double
    public var peak_rss_bytes: Int
}

/// Streams `options.model` over the examples: only one layer's weights are converted and resident at
/// a time, and each hidden state goes to the output as soon as it exists. Writes `last_hidden_state`
/// [N, S, H]; BERT models with a pooler add `pooler_output` [N, H]; a head adds `logits` ([N, C] on the
/// pooled output for BERT, [N, S, C] for the Llama family). As in transformers, hidden_state_L equals
/// last_hidden_state (after the final norm in the Llama family).
public func runForward(_ options: ForwardOptions) throws -> ForwardSummary {
    let started = Date()
    setKernelThreads(options.threads)
    let source = try ModelSource(path: options.model)
    let architecture = try Architecture(source: source)
    let config = architecture.config
    let reader = LayerReader(source: source)
    guard reader.blockIndices == Array(0..<config.layers) else {
        throw ArchitectureError.invalidConfig(
            path: options.model, detail: "config.json declares \(config.layers) blocks but the weights hold blocks \(reader.blockIndices)")
    }
    let examples = try TokenizedExample.readJSONL(options.input)
    let batch = TokenBatch(examples, padID: Int32(config.padTokenID), maxLength: config.maxPositions)
    try architecture.validate(batch, origin: options.input)
    let head = try options.head.map { path throws -> LinearHead in
        try LinearHead(file: try SafetensorsFile(path: path), hidden: config.hidden)
    }
    let hasPooler = config.family == .bert && reader.layerTensors[.final]?["pooler.dense.weight"] != nil

    let (N, S, H) = (batch.B, batch.S, config.hidden)
    var specs: [TensorSpec] = []
    if options.allLayers {
        specs += (0...config.layers).map { TensorSpec(name: "hidden_state_\($0)", dtype: .f32, shape: [N, S, H]) }
    }
    specs.append(TensorSpec(name: "last_hidden_state", dtype: .f32, shape: [N, S, H]))
    if hasPooler { specs.append(TensorSpec(name: "pooler_output", dtype: .f32, shape: [N, H])) }
    if let head {
        let classes = head.weight.shape[0]
        specs.append(TensorSpec(name: "logits", dtype: .f32, shape: config.family == .bert ? [N, classes] : [N, S, classes]))
    }
    let layout = SafetensorsLayout(specs)
    let file = try OutputFile(path: options.output)
    try layout.headerBytes.withUnsafeBytes { try file.write($0) }
    func emit(_ tensor: Tensor) throws {
        try file.write(UnsafeRawBufferPointer(start: tensor.data, count: tensor.byteCount))
    }

    var hidden = try architecture.embed(batch, weights: reader.read(.embeddings))
    if options.allLayers { try emit(hidden) }
    for index in 0..<config.layers {
        let block = try architecture.block(reader.read(.block(index)))
        let next = Tensor(shape: [N * S, H])
        for start in stride(from: 0, to: N, by: options.batchSize) {
            let range = start..<min(N, start + options.batchSize)
            let part = batch.slice(range)
            let input = Tensor(shape: [part.rows, H])
            input.data.update(from: hidden.data + start * S * H, count: part.rows * H)
            let output = block.forward(input, context: architecture.context(for: part)).output
            (next.data + start * S * H).update(from: output.data, count: part.rows * H)
        }
        hidden = next
        // Fault-around maps neighbouring pages of later tensors too; sweep them so nothing accumulates with depth.
        for file in source.files { file.mapping.releaseAll() }
        if options.allLayers && index < config.layers - 1 { try emit(hidden) }
    }
    let final = reader.read(.final)
    let last = try architecture.lastHiddenState(hidden, final: final)
    if options.allLayers { try emit(last) }
    try emit(last)
    let pooled = try architecture.pooled(last, final: final, batch: batch)
    if let pooled { try emit(pooled) }
    if let head {
        if config.family == .bert {
            // Sequence classification heads read the pooler output, or the first token without a pooler.
            let features = pooled ?? { () -> Tensor in
                let first = Tensor(shape: [N, H])
                for b in 0..<N { (first.data + b * H).update(from: last.data + b * S * H, count: H) }
                return first
            }()
            try emit(head.apply(features, rows: N))
        } else {
            try emit(head.apply(last, rows: N * S))
        }
    }
    try file.commit()
    return ForwardSummary(
        model_type: config.modelType, examples: N, sequence_length: S, blocks: config.layers, tensors: specs.map(\.name),
        seconds: Date().timeIntervalSince(started), peak_rss_bytes: peakResidentBytes())
}
