// StreamedGradient: loss and ∂L/∂λ through the whole merged model, one layer resident at a time, layer inputs kept in the scratch cache.
import Foundation
import ModelArchitectures
import TensorKernels

/// What the end-to-end methods minimise over each batch's rows (weights from `OutputTape`).
public enum EndToEndObjective: Sendable {
    /// SAMerging: KL(softmax(teacher/τ) ‖ softmax(student/τ)).
    case distillation(temperature: Float)
    /// AdaMerging: the entropy of softmax(student).
    case entropy
}

/// One batch of one task in a streamed evaluation, with its teacher logits for distillation.
public struct TaskBatch {
    public let task: Int
    public let batch: TokenBatch
    public let teacherLogits: Tensor?
}

/// Computes Σ over `items` of the objective through the model merged at λ, and ∂/∂λ:
/// - forward: each layer's merged weights are built from the mapped inputs, every item's input to
///   the layer is appended to `E<l>.smac` in the scratch directory (one chunk per item), and the
///   activations move on; then the final layers and heads give the loss and ∂/∂features;
/// - backward, last layer first: the layer is merged again, each item's input read back and the
///   layer re-run with its tape, its backward pass gives ∂L/∂W (summed over items) and the gradient
///   for the layer below; ∂L/∂λᵢ,k = ⟨∂L/∂W_k, τᵢ,k⟩ is taken before the layer is dropped.
/// Memory: one layer's weights and weight gradients, plus every item's activation at one depth.
public final class StreamedGradient {
    let architecture: Architecture
    let coefficients: TensorCoefficients
    /// Encoders: the task heads. Decoders: nil (the LM head is part of the merged model).
    let heads: [LinearHead]?
    let pooling: HeadPooling
    let scratch: String
    let dtype: ActivationDType
    let threads: Int
    public private(set) var codecSeconds = 0.0

    public init(architecture: Architecture, coefficients: TensorCoefficients, heads: [LinearHead]?, pooling: HeadPooling,
                scratch: String, dtype: ActivationDType, threads: Int) {
        self.architecture = architecture
        self.coefficients = coefficients
        self.heads = heads
        self.pooling = pooling
        self.scratch = scratch
        self.dtype = dtype
        self.threads = threads
    }

    var blocks: [Int] { coefficients.layers.compactMap { if case let .block(i) = $0 { i } else { nil } } }
    var H: Int { architecture.config.hidden }

    /// The LM head of a decoder from its final layer's weights, or (tied) its embeddings'.
    static func lmHead(final: LayerWeights, embeddings: () throws -> LayerWeights) throws -> LinearHead {
        if let weight = final["lm_head.weight"] { return LinearHead(weight: weight, bias: nil) }
        guard let table = try embeddings()["embed_tokens.weight"] else {
            throw ArchitectureError.missingTensor(path: final.origin, tensor: "lm_head.weight (or tied embed_tokens.weight)")
        }
        return LinearHead(weight: table, bias: nil)
    }

    /// The loss at `values`, and its gradient when `gradient` is true.
    public func evaluate(_ items: [TaskBatch], values: [Double], objective: EndToEndObjective, gradient wanted: Bool) throws
        -> (loss: Double, gradient: [Double]?) {
        let contexts = items.map { architecture.context(for: $0.batch) }
        // Forward.
        var embeddings: LayerWeights? = try coefficients.merged(.embeddings, values: values, threads: threads)
        var x = try items.map { try architecture.embedForward($0.batch, weights: embeddings!).output }
        let tied = architecture.config.family == .llama && architecture.config.tieWordEmbeddings
        if !tied { embeddings = nil }
        for l in blocks {
            let block = try architecture.block(coefficients.merged(.block(l), values: values, threads: threads))
            let saved = wanted ? try ActivationCacheWriter(path: inputPath(l), dtype: dtype, exampleCount: items.reduce(0) { $0 + $1.batch.B }, rowShape: [H]) : nil
            for n in items.indices {
                try saved?.append(x[n].data, count: x[n].count)
                x[n] = block.forward(x[n], context: contexts[n]).output
            }
            try saved?.finish()
            codecSeconds += saved?.codecSeconds ?? 0
            releaseFreedTensorMemory()
        }

        // Final layers, heads and the loss; ∂L/∂(last block output) per item.
        let final = try coefficients.merged(.final, values: values, threads: threads)
        let finalGradients = final.zerosLike()
        let lmHead = heads == nil ? try Self.lmHead(final: final, embeddings: { embeddings! }) : nil
        let headGradient = lmHead.map { Tensor(shape: $0.weight.shape) }
        var loss = 0.0
        var dout: [Tensor] = []
        for (n, item) in items.enumerated() {
            let tape = try architecture.outputForward(x[n], final: final, batch: item.batch, pooling: pooling)
            let head = lmHead ?? heads![item.task]
            let rows = tape.rowWeights.count, C = head.weight.shape[0]
            let logits = head.apply(tape.features, rows: rows)
            let dlogits = Tensor(shape: [rows, C])
            switch objective {
            case let .distillation(temperature):
                let teacher = item.teacherLogits!
                loss += klDivergenceForward(student: logits.data, teacher: teacher.data, rowWeights: tape.rowWeights, C: C, temperature: temperature)
                if wanted { klDivergenceBackward(dstudent: dlogits.data, student: logits.data, teacher: teacher.data, rowWeights: tape.rowWeights, C: C, temperature: temperature) }
            case .entropy:
                loss += entropyForward(logits.data, rowWeights: tape.rowWeights, C: C)
                if wanted { entropyBackward(dlogits: dlogits.data, logits.data, rowWeights: tape.rowWeights, C: C) }
            }
            guard wanted else { continue }
            let dfeatures = Tensor(shape: [rows, H])
            // A task head is fixed; a decoder's LM head is merged, so its weight gradient counts.
            withExtendedLifetime((logits, dlogits)) {
                linearBackward(dinp: dfeatures.data, dweight: headGradient?.data, dbias: nil, dout: dlogits.data, inp: tape.features.data,
                               weight: head.weight.data, B: rows, C: H, OC: C)
            }
            dout.append(architecture.outputBackward(tape, dfeatures: dfeatures, final: final, gradients: finalGradients))
        }
        guard wanted else { return (loss, nil) }
        var gradient = [Double](repeating: 0, count: coefficients.taskCount * coefficients.count)
        if let headGradient, let untied = finalGradients["lm_head.weight"] {
            addInPlace(untied.data, headGradient.data, N: headGradient.count)
        }
        try coefficients.accumulate(.final, weightGradients: finalGradients, into: &gradient, threads: threads)
        releaseFreedTensorMemory()

        // Backward through the blocks, last first.
        for l in blocks.reversed() {
            let weights = try coefficients.merged(.block(l), values: values, threads: threads)
            let block = try architecture.block(weights)
            let weightGradients = weights.zerosLike()
            let saved = try ActivationCacheReader(path: inputPath(l))
            for n in items.indices {
                let input = Tensor(shape: [items[n].batch.rows, H])
                try saved.read(chunk: n, into: input.data)
                let tape = block.forward(input, context: contexts[n])
                dout[n] = block.backward(tape, dout: dout[n], gradients: weightGradients, context: contexts[n])
            }
            codecSeconds += saved.codecSeconds
            try? FileManager.default.removeItem(atPath: inputPath(l))
            try coefficients.accumulate(.block(l), weightGradients: weightGradients, into: &gradient, threads: threads)
            releaseFreedTensorMemory()
        }

        // Embeddings (re-merged unless kept for a tied LM head), with a tied head's gradient added.
        let table = try embeddings ?? coefficients.merged(.embeddings, values: values, threads: threads)
        let tableGradients = table.zerosLike()
        for (n, item) in items.enumerated() {
            let tape = try architecture.embedForward(item.batch, weights: table)
            try architecture.embedBackward(tape, dout: dout[n], weights: table, gradients: tableGradients)
        }
        if tied, let headGradient { addInPlace(tableGradients["embed_tokens.weight"]!.data, headGradient.data, N: headGradient.count) }
        try coefficients.accumulate(.embeddings, weightGradients: tableGradients, into: &gradient, threads: threads)
        return (loss, gradient)
    }

    func inputPath(_ block: Int) -> String { scratch + "/E\(block).smac" }
}
