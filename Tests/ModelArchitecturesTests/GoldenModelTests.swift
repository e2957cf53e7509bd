// GoldenModelTests: every block and whole models of each family against transformers (float64 goldens from
// tools/make_kernel_goldens.py), forward outputs and the gradients of a scalar loss; padding invariance.
import Foundation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels
import Testing
import TestSupport

/// max |a − b| / max |b|: relative to the tensor's scale, so near-zero entries do not turn f32
/// rounding into large ratios.
/// `floor` stands in for the scale of a tensor that is zero in exact arithmetic.
func scaledError(_ actual: [Float], _ expected: [Float], floor: Double = 1e-30) -> Double {
    precondition(actual.count == expected.count, "length \(actual.count) vs \(expected.count)")
    let difference = zip(actual, expected).reduce(0) { max($0, abs(Double($1.0) - Double($1.1))) }
    return difference / max(maxAbs(expected), floor)
}

func maxAbs(_ values: [Float]) -> Double { values.reduce(0) { max($0, abs(Double($1))) } }

/// A tiny fixture model and its goldens.
struct GoldenFixture {
    let name: String
    let source: ModelSource
    let architecture: Architecture
    let reader: LayerReader
    let golden: SafetensorsFile

    init(_ name: String) throws {
        self.name = name
        source = try ModelSource(path: fixturesDirectory + "/models/\(name)")
        architecture = try Architecture(source: source)
        reader = LayerReader(source: source)
        golden = try SafetensorsFile(path: fixturesDirectory + "/models/\(name)/golden.safetensors")
    }

    func values(_ key: String) throws -> [Float] { try golden.floats(key) }

    func tensor(_ key: String) throws -> Tensor {
        Tensor(shape: [golden.info(key)!.elementCount], values: try values(key))
    }

    func batch() throws -> TokenBatch {
        let shape = golden.info("input_ids")!.shape
        let (B, S) = (shape[0], shape[1])
        let ids = try values("input_ids").map { Int32($0) }, mask = try values("attention_mask").map { Int32($0) }
        let types = golden.info("token_type_ids") != nil ? try values("token_type_ids").map { Int32($0) } : [Int32](repeating: 0, count: B * S)
        let examples = (0..<B).map { b in
            TokenizedExample(inputIDs: Array(ids[b * S..<(b + 1) * S]), attentionMask: Array(mask[b * S..<(b + 1) * S]),
                             tokenTypeIDs: Array(types[b * S..<(b + 1) * S]))
        }
        return TokenBatch(examples, padID: Int32(architecture.config.padTokenID))
    }
}

let goldenFamilies = ["bert-tiny", "roberta-tiny", "llama-tiny", "llama3-tiny", "qwen2-tiny", "mistral-tiny"]

@Suite("Golden models (transformers)")
struct GoldenModelTests {
    @Test("embeddings, every block, final layers and logits match transformers within 1e-5", arguments: goldenFamilies)
    func forward(name: String) throws {
        let f = try GoldenFixture(name)
        let batch = try f.batch()
        let config = f.architecture.config
        let context = f.architecture.context(for: batch)
        var hidden = try f.architecture.embed(batch, weights: f.reader.read(.embeddings))
        #expect(scaledError(hidden.values, try f.values("hidden_state_0")) < 1e-5, "\(name) embeddings")
        for l in 0..<config.layers {
            let block = try f.architecture.block(f.reader.read(.block(l)))
            // Each block on the golden input, so errors do not compound across blocks…
            let alone = block.forward(try f.tensor("block_input_\(l)"), context: context).output
            #expect(scaledError(alone.values, try f.values("block_output_\(l)")) < 1e-5, "\(name) block \(l)")
            // …and the whole chain, as `forward` runs it.
            hidden = block.forward(hidden, context: context).output
            if l < config.layers - 1 {
                #expect(scaledError(hidden.values, try f.values("hidden_state_\(l + 1)")) < 1e-5, "\(name) hidden state \(l + 1)")
            }
        }
        let final = f.reader.read(.final)
        let last = try f.architecture.lastHiddenState(hidden, final: final)
        #expect(scaledError(last.values, try f.values("last_hidden_state")) < 1e-5, "\(name) last hidden state")
        #expect(scaledError(last.values, try f.values("hidden_state_\(config.layers)")) < 1e-5)
        switch config.family {
        case .bert:
            if let pooled = try f.architecture.pooled(last, final: final, batch: batch) {
                #expect(scaledError(pooled.values, try f.values("pooler_output")) < 1e-5, "\(name) pooler")
                if let w = final["classifier.weight"] {
                    let logits = LinearHead(weight: w, bias: final["classifier.bias"]).apply(pooled, rows: batch.B)
                    #expect(scaledError(logits.values, try f.values("logits")) < 1e-5, "\(name) logits")
                }
            }
        case .llama:
            let lmHead = final["lm_head.weight"] ?? f.reader.read(.embeddings)["embed_tokens.weight"]!
            #expect(config.tieWordEmbeddings == (final["lm_head.weight"] == nil))
            let logits = LinearHead(weight: lmHead, bias: nil).apply(last, rows: batch.rows)
            #expect(scaledError(logits.values, try f.values("logits")) < 1e-5, "\(name) logits")
        }
    }

    @Test("block backward: gradients of every weight and of the input match PyTorch autograd within 1e-4", arguments: goldenFamilies)
    func backward(name: String) throws {
        let f = try GoldenFixture(name)
        let batch = try f.batch()
        let context = f.architecture.context(for: batch)
        for l in 0..<f.architecture.config.layers {
            let weights = f.reader.read(.block(l))
            let block = try f.architecture.block(weights)
            let tape = block.forward(try f.tensor("block_input_\(l)"), context: context)
            let gradients = weights.zerosLike()
            let dx = block.backward(tape, dout: try f.tensor("probe_\(l)"), gradients: gradients, context: context)
            #expect(scaledError(dx.values, try f.values("grad_input_\(l)")) < 1e-4, "\(name) block \(l) input gradient")
            let expected = try f.reader.layerTensors[.block(l)]!.mapValues { try f.values("grad.\($0)") }
            // The key bias's gradient is zero in exact arithmetic (softmax ignores a shift shared by a
            // row's scores), so tensors are judged against at least 1e-3 of the block's largest gradient.
            let blockScale = expected.values.map(maxAbs).max()!
            var checked = 0
            for (local, stored) in f.reader.layerTensors[.block(l)]! {
                #expect(scaledError(gradients[local]!.values, expected[local]!, floor: 1e-3 * blockScale) < 1e-4,
                        "\(name) gradient of \(stored)")
                checked += 1
            }
            #expect(checked == weights.tensors.count && checked >= 9)
            // Without the input's gradient (as ProDistill asks), the weights' gradients are the same.
            let weightsOnly = weights.zerosLike()
            _ = block.backward(tape, dout: try f.tensor("probe_\(l)"), gradients: weightsOnly, context: context, inputGradient: false)
            for (local, gradient) in gradients.tensors { #expect(weightsOnly[local]!.values == gradient.values, "\(name) \(local)") }
        }
    }

    @Test("padded positions never change the outputs at real tokens", arguments: ["bert-tiny", "llama-tiny", "qwen2-tiny"])
    func padding(name: String) throws {
        let f = try GoldenFixture(name)
        let batch = try f.batch()
        func run(_ batch: TokenBatch) throws -> [Float] {
            let context = f.architecture.context(for: batch)
            var hidden = try f.architecture.embed(batch, weights: f.reader.read(.embeddings))
            for l in 0..<f.architecture.config.layers {
                hidden = try f.architecture.block(f.reader.read(.block(l))).forward(hidden, context: context).output
            }
            return hidden.values
        }
        var scrambled = batch
        var padded = 0
        for i in 0..<batch.rows where batch.attentionMask[i] == 0 {
            scrambled.inputIDs[i] = Int32((Int(batch.inputIDs[i]) + 7 + i) % f.architecture.config.vocabulary)
            padded += 1
        }
        #expect(padded > 0)
        let (a, b) = (try run(batch), try run(scrambled))
        let H = f.architecture.config.hidden
        for i in 0..<batch.rows where batch.attentionMask[i] == 1 {
            #expect(Array(a[i * H..<(i + 1) * H]) == Array(b[i * H..<(i + 1) * H]), "\(name) row \(i)")
        }
    }
}
