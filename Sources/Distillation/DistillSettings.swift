// DistillSettings: the `distill:` block of a data-driven merge config, with its defaults.
import ModelArchitectures

/// How the data-driven methods train merging coefficients (ProDistill, SAMerging, AdaMerging) or solve them (RegMean).
public struct DistillSettings: Sendable, Equatable {
    /// One coefficient per weight element (the paper's) or per tensor.
    public enum Granularity: String, Sendable { case element, tensor }
    /// How a batch's squared error is scaled: `sum` is the paper's Σ 1/(2T|Dᵢ|) Σ‖·‖², `mean`
    /// divides by the batch's (real) tokens × hidden. Under Adam the scale matters through ε.
    public enum LossReduction: String, Sendable { case sum, mean }

    public var epochs = 50
    public var learningRate = 0.01
    public var batchSize = 16
    /// Initial coefficient; nil means 0.3, or 0.5 with at most two fine-tunes (DESIGN.md §7).
    public var initialLambda: Double? = nil
    public var granularity = Granularity.element
    public var activationDType = ActivationDType.float32
    public var includePadding = false
    public var maxLength = 128
    public var loss = LossReduction.sum
    /// RegMean: the factor on the Gram matrices' off-diagonal entries.
    public var alpha = 0.9
    /// SAMerging and AdaMerging: Adam steps, each on one batch of every task.
    public var steps = 100
    /// SAMerging: the adaptive SAM radius and the distillation temperature.
    public var rho = 0.07
    public var temperature = 2.0
    /// AdaMerging: keep every coefficient in [0, 1] after each step.
    public var clamp = false
    /// Encoders: what the task heads read; nil means the pooler when the model has one, else `cls`.
    public var headPooling: HeadPooling? = nil

    public init() {}

    public func lambda(taskCount: Int) -> Double { initialLambda ?? (taskCount <= 2 ? 0.5 : 0.3) }
}
