// EndToEndMerge: SAMerging and AdaMerging — per-tensor coefficients trained by Adam on streamed end-to-end gradients, with a resumable checkpoint.
import FileIO
import Foundation
import ModelArchitectures
import TensorKernels

/// Progress of end-to-end training: (step, steps, loss of the step).
public typealias TrainingProgress = @Sendable (Int, Int, Double) -> Void

/// What end-to-end training reports in the manifest: deterministic, so equal runs give equal manifests.
public struct EndToEndStatistics: Codable, Sendable, Equatable {
    /// The objective summed over every calibration batch, at the initial and the trained coefficients.
    public var loss_before: Double
    public var loss_after: Double
    public var steps: Int
    /// Per task: the mean of its coefficients over all tensors.
    public var lambda_mean: [Double]
}

/// SAMerging (DESIGN.md §7): Σ_t mean KL(teacher_t ‖ merged) at temperature τ through task t's head,
/// teacher logits computed once per calibration batch; each step takes the adaptive SAM perturbation
/// ε = ρ·λ²⊙g / (‖|λ|⊙g‖₂ + 1e-12), the gradient g′ at λ + ε on the same batches, and an Adam step
/// on λ with g′. AdaMerging: Σ_t mean entropy of the merged model's predictions, plain Adam, optional
/// clamp to [0, 1]. One coefficient per tensor per task; step s takes one batch of every task.
public final class EndToEndMerge {
    public enum Method: String, Sendable { case samerging, adamerging }

    let method: Method
    let settings: DistillSettings
    let architecture: Architecture
    let fineTunes: [LayerReader]
    public let coefficients: TensorCoefficients
    let gradient: StreamedGradient
    let heads: [LinearHead]?
    let batches: [[TokenBatch]]
    let threads: Int
    let seed: UInt64
    /// The head input of every calibration batch through its own fine-tune (distillation only); the
    /// teacher logits are computed from them when a batch is used, so a decoder never holds logits
    /// over the vocabulary for more than one batch.
    private var teacherFeatures: [[Tensor]] = []

    public init(method: Method, settings: DistillSettings, architecture: Architecture, base: LayerReader, fineTunes: [LayerReader],
                heads: [LinearHead]?, calibration: [[TokenizedExample]], calibrationPaths: [String], scratch: String,
                threads: Int, seed: UInt64) throws {
        self.method = method
        self.settings = settings
        self.architecture = architecture
        self.fineTunes = fineTunes
        self.heads = heads
        self.threads = threads
        self.seed = seed
        coefficients = TensorCoefficients(base: base, fineTunes: fineTunes)
        batches = try CalibrationCache.batches(calibration, settings: settings, architecture: architecture, paths: calibrationPaths)
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        gradient = StreamedGradient(architecture: architecture, coefficients: coefficients, heads: heads,
                                    pooling: Self.pooling(settings, architecture: architecture, base: base), scratch: scratch,
                                    dtype: settings.activationDType, threads: threads)
    }

    /// The configured pooling, or the pooler when the base has one (what BertForSequenceClassification's head reads), else cls.
    static func pooling(_ settings: DistillSettings, architecture: Architecture, base: LayerReader) -> HeadPooling {
        if let chosen = settings.headPooling { return chosen }
        return base.layerTensors[.final]?["pooler.dense.weight"] != nil ? .pooler : .cls
    }

    /// Seconds spent compressing and decompressing saved layer inputs.
    public var codecSeconds: Double { gradient.codecSeconds }

    var objective: EndToEndObjective {
        method == .samerging ? .distillation(temperature: Float(settings.temperature)) : .entropy
    }

    /// Teacher features of every calibration batch: each fine-tune streamed through its own layers on
    /// its own task's batches up to the head's input.
    private func computeTeacherFeatures() throws {
        guard method == .samerging, teacherFeatures.isEmpty else { return }
        for (task, reader) in fineTunes.enumerated() {
            let embeddings = reader.read(.embeddings)
            var x = try batches[task].map { try architecture.embedForward($0, weights: embeddings).output }
            for l in gradient.blocks {
                let block = try architecture.block(reader.read(.block(l)))
                for n in x.indices { x[n] = block.forward(x[n], context: architecture.context(for: batches[task][n])).output }
            }
            let final = reader.read(.final)
            teacherFeatures.append(try x.indices.map { n in
                try architecture.outputForward(x[n], final: final, batch: batches[task][n], pooling: gradient.pooling).features
            })
            for file in reader.source.files { file.mapping.releaseAll() }
        }
    }

    /// Task `task`'s teacher head: the task head (encoders) or the fine-tune's own LM head, read when needed.
    private func teacherHead(_ task: Int) throws -> LinearHead {
        if let heads { return heads[task] }
        defer { for file in fineTunes[task].source.files { file.mapping.releaseAll() } }
        return try StreamedGradient.lmHead(final: fineTunes[task].read(.final), embeddings: { fineTunes[task].read(.embeddings) })
    }

    /// Batch `number` of `task`, with its teacher logits for distillation.
    public func item(task: Int, batch number: Int) throws -> TaskBatch {
        try computeTeacherFeatures()
        let batch = batches[task][number]
        guard method == .samerging else { return TaskBatch(task: task, batch: batch, teacherLogits: nil) }
        let features = teacherFeatures[task][number]
        return TaskBatch(task: task, batch: batch, teacherLogits: try teacherHead(task).apply(features, rows: features.shape[0]))
    }

    /// The batches of step `step`: for each task, position step mod n of a per-epoch Fisher–Yates
    /// order of its n batches, keyed by (seed, task, epoch).
    public func items(step: Int) throws -> [TaskBatch] {
        try batches.indices.map { task in
            let n = batches[task].count, epoch = step / n
            let order = ProDistill.batchOrder((0..<n).map { (task: task, batch: $0) }, seed: seed, layer: task, epoch: epoch)
            return try item(task: task, batch: order[step % n].batch)
        }
    }

    /// The objective summed over every calibration batch of every task (forward passes only).
    public func fullLoss(_ values: [Double]) throws -> Double {
        let all = try batches.indices.flatMap { task in try batches[task].indices.map { try item(task: task, batch: $0) } }
        return try gradient.evaluate(all, values: values, objective: objective, gradient: false).loss
    }

    /// The loss and ∂L/∂λ on `items` at `values`.
    public func lossAndGradient(_ items: [TaskBatch], values: [Double]) throws -> (loss: Double, gradient: [Double]) {
        let (loss, g) = try gradient.evaluate(items, values: values, objective: objective, gradient: true)
        return (loss, g!)
    }

    /// The adaptive SAM perturbation ε = ρ·λ²⊙g / (‖|λ|⊙g‖₂ + 1e-12).
    public static func samPerturbation(values: [Double], gradient: [Double], rho: Double) -> [Double] {
        let norm = zip(values, gradient).reduce(0.0) { $0 + ($1.0 * $1.1) * ($1.0 * $1.1) }.squareRoot()
        let scale = rho / (norm + 1e-12)
        return zip(values, gradient).map { scale * $0 * $0 * $1 }
    }

    /// Fresh training state: every coefficient at `init`, Adam's moments at zero.
    public func initialState() -> EndToEndState {
        let zeros = [Double](repeating: 0, count: coefficients.taskCount * coefficients.count)
        return EndToEndState(step: 0, values: zeros.map { _ in settings.initialLambda ?? 0.3 }, first: zeros, second: zeros)
    }

    /// One training step on `items`: the gradient (SAMerging: at λ + ε), then Adam as torch.optim.Adam
    /// in double, then the optional clamp. Returns the loss at λ before the step.
    public func advance(_ state: inout EndToEndState, items: [TaskBatch]) throws -> Double {
        var (loss, g) = try lossAndGradient(items, values: state.values)
        if method == .samerging {
            let epsilon = Self.samPerturbation(values: state.values, gradient: g, rho: settings.rho)
            g = try lossAndGradient(items, values: zip(state.values, epsilon).map(+)).gradient
        }
        let (beta1, beta2, epsilon, lr) = (0.9, 0.999, 1e-8, settings.learningRate)
        let t = Double(state.step + 1)
        let bias1 = 1 - pow(beta1, t), bias2 = 1 - pow(beta2, t)
        for j in g.indices {
            state.first[j] = beta1 * state.first[j] + (1 - beta1) * g[j]
            state.second[j] = beta2 * state.second[j] + (1 - beta2) * g[j] * g[j]
            state.values[j] -= lr / bias1 * state.first[j] / (state.second[j].squareRoot() / bias2.squareRoot() + epsilon)
            if settings.clamp { state.values[j] = min(max(state.values[j], 0), 1) }
        }
        state.step += 1
        return loss
    }

    /// Trains from `checkpoint` (or from λ = init) to `settings.steps`, saving the checkpoint after
    /// every step so a killed run resumes exactly where it stopped. Returns the trained coefficients.
    public func train(checkpoint path: String, progress: TrainingProgress?) throws -> (values: [Double], statistics: EndToEndStatistics) {
        var state = try EndToEndState.load(path) ?? initialState()
        guard state.values.count == coefficients.taskCount * coefficients.count else {
            throw ArchitectureError.badInput(path: path, detail: "the checkpoint does not match the models' tensors; start the merge again")
        }
        if state.lossBefore == nil {
            state.lossBefore = try fullLoss(state.values)
            try state.save(path)
        }
        while state.step < settings.steps {
            let loss = try advance(&state, items: try items(step: state.step))
            try state.save(path)
            progress?(state.step, settings.steps, loss)
        }
        let K = coefficients.count
        let means = (0..<coefficients.taskCount).map { t in state.values[(t * K)..<((t + 1) * K)].reduce(0, +) / Double(K) }
        return (state.values, EndToEndStatistics(loss_before: state.lossBefore!, loss_after: try fullLoss(state.values),
                                                 steps: settings.steps, lambda_mean: means))
    }
}

extension EndToEndMerge {
    /// Peak bytes of the end-to-end working set while a streamed evaluation passes `layer` (the
    /// executor's buffers and the process come on top):
    /// - the layer's merged weights and their gradient, 8 bytes per parameter (a tied decoder also
    ///   keeps its merged embedding table through the pass);
    /// - every task's batch at this depth and its gradient, 2·T·rows·H floats, plus one batch's block
    ///   tape and backward temporaries (as ProDistill's estimate counts them);
    /// - final layers of a decoder: the LM head's gradient and one batch's logits and their gradient;
    /// - the teachers' head inputs for every calibration example (SAMerging), one teacher LM head
    ///   (decoders), and per-thread task-vector chunks.
    public static func estimatedPeakBytes(
        layer: LayerKey, config: ArchitectureConfig, layerParameters: Int, embeddingParameters: Int,
        calibrationExamples: [Int], settings: DistillSettings, threads: Int
    ) -> Int {
        let T = calibrationExamples.count
        let rows = settings.batchSize * settings.maxLength
        let (H, I) = (config.hidden, config.intermediate)
        let decoder = config.family == .llama
        let tape = 4 * (rows * (16 * H + 4 * I) + 2 * config.heads * settings.batchSize * settings.maxLength * settings.maxLength)
        let batches = 2 * T * rows * H * 4
        let chunks = threads * (T + 1) * TaskVectors.chunkSize * 4
        let tied = decoder && config.tieWordEmbeddings ? 4 * embeddingParameters : 0
        let teacherRows = decoder ? settings.maxLength : 1
        let teachers = calibrationExamples.reduce(0) { $0 + $1 * teacherRows * H * 4 }
        var stage = 8 * layerParameters + batches + chunks + teachers + tied
        switch layer {
        case .block: stage += tape
        // A decoder's logits span the vocabulary: the merged head's gradient, a teacher's head, and
        // a batch's student and teacher logits and their gradient.
        case .final: stage += decoder ? 2 * 4 * config.vocabulary * H + 3 * 4 * rows * config.vocabulary : 0
        case .embeddings: break
        }
        return stage
    }
}

/// Training state after a step: coefficients ([task][k]) and Adam's moments; checkpointed as exact bit patterns.
public struct EndToEndState {
    public var step: Int
    public var values: [Double]
    public var first: [Double]
    public var second: [Double]
    var lossBefore: Double? = nil

    private struct Stored: Codable {
        var step: Int
        var values: [UInt64], first: [UInt64], second: [UInt64]
        var loss_before: UInt64?
    }

    static func load(_ path: String) throws -> EndToEndState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        guard let s = try? JSONDecoder().decode(Stored.self, from: data) else {
            throw ArchitectureError.badInput(path: path, detail: "unreadable training checkpoint; start the merge again")
        }
        let bits: ([UInt64]) -> [Double] = { $0.map(Double.init(bitPattern:)) }
        return EndToEndState(step: s.step, values: bits(s.values), first: bits(s.first), second: bits(s.second),
                                  lossBefore: s.loss_before.map(Double.init(bitPattern:)))
    }

    func save(_ path: String) throws {
        let stored = Stored(step: step, values: values.map(\.bitPattern), first: first.map(\.bitPattern),
                            second: second.map(\.bitPattern), loss_before: lossBefore?.bitPattern)
        try writeFileAtomically(path, Array(try JSONEncoder().encode(stored)))
    }
}
