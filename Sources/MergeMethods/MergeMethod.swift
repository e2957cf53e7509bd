// MergeMethod: the data-free methods and the per-tensor parameters they take.

/// A data-free merge method with mergekit's semantics (DESIGN.md §7).
public enum MergeMethod: String, Sendable, CaseIterable {
    case linear
    case taskArithmetic = "task_arithmetic"
    case ties
    case dareLinear = "dare_linear"
    case dareTies = "dare_ties"

    /// mergekit's default for `normalize` per method.
    public var normalizesByDefault: Bool {
        switch self {
        case .linear, .ties: true
        case .taskArithmetic, .dareLinear, .dareTies: false
        }
    }

    var sparsification: Sparsification {
        switch self {
        case .linear, .taskArithmetic: .none
        case .ties: .magnitude
        case .dareLinear, .dareTies: .random
        }
    }

    var electsSign: Bool { self == .ties || self == .dareTies }
}

enum Sparsification { case none, magnitude, random }

/// How DARE rescales the elements it keeps.
public enum DARERescale: String, Sendable {
    /// Divide kept elements by the density (the DARE paper, mergekit's `rescale: true`).
    case density
    /// Scale so the L1 norm of the task vector is unchanged (mergekit's `rescale_norm: l1`).
    case l1
    /// Keep kept elements as they are.
    case none
}

/// The parameters of one tensor's merge, already resolved for its layer.
public struct TensorMergeParameters: Sendable {
    /// Per fine-tune weight wᵢ.
    public var weights: [Float]
    /// Per fine-tune density (TIES, DARE); 1 keeps everything.
    public var densities: [Double]
    public var lambda: Float
    public var normalize: Bool
    public var rescale: DARERescale

    public init(weights: [Float], densities: [Double], lambda: Float = 1, normalize: Bool, rescale: DARERescale = .density) {
        self.weights = weights
        self.densities = densities
        self.lambda = lambda
        self.normalize = normalize
        self.rescale = rescale
    }
}
