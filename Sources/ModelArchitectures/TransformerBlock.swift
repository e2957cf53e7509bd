// TransformerBlock: what every architecture's block offers — a forward pass that records a tape, and its backward pass.
import TensorKernels

/// Per-batch inputs every block of a model shares: sizes, the padding mask and RoPE tables.
public struct BlockContext: Sendable {
    public let B: Int
    public let S: Int
    /// [B, S]: 1 for a real token, 0 for padding.
    public let attentionMask: [Int32]
    /// Llama family only: rotary tables covering S positions.
    public let rope: RoPETables?

    public init(B: Int, S: Int, attentionMask: [Int32], rope: RoPETables?) {
        precondition(attentionMask.count == B * S)
        self.B = B; self.S = S; self.attentionMask = attentionMask; self.rope = rope
    }

    public var rows: Int { B * S }
}

/// The activations a block's forward pass keeps for its backward pass; `output` is the block's result.
public protocol BlockTape: AnyObject {
    var output: Tensor { get }
}

/// One transformer block with fixed weights.
public protocol TransformerBlock {
    /// Runs the block on `input` [B·S, hidden].
    func forward(_ input: Tensor, context: BlockContext) -> BlockTape
    /// Accumulates the gradient of every weight into `gradients` (same names as the weights) and
    /// returns the gradient with respect to the block's input. With `inputGradient` false the caller
    /// does not need it (ProDistill's block inputs are data): the block may skip the products that
    /// only serve it and return nil.
    func backward(_ tape: BlockTape, dout: Tensor, gradients: LayerWeights, context: BlockContext, inputGradient: Bool) -> Tensor?
    /// The input [rows, in] of every linear layer recorded in `tape`, with the weights (local names)
    /// that read it: RegMean's Gram matrices come from these.
    func linearInputs(_ tape: BlockTape) -> [(weights: [String], input: Tensor)]
}

extension TransformerBlock {
    /// The backward pass with the input's gradient.
    public func backward(_ tape: BlockTape, dout: Tensor, gradients: LayerWeights, context: BlockContext) -> Tensor {
        backward(tape, dout: dout, gradients: gradients, context: context, inputGradient: true)!
    }
}

/// y = x·Wᵀ + b as a new [rows, out] tensor.
func linear(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, rows: Int) -> Tensor {
    let out = Tensor(shape: [rows, weight.shape[0]])
    linearForward(out.data, x.data, weight.data, bias?.data, B: rows, C: weight.shape[1], OC: weight.shape[0])
    return out
}

/// Backward of `linear`: dx += dy·W (when dx is given), and the named weight/bias gradients.
func linearGradients(
    _ dy: Tensor, x: Tensor, weight: Tensor, dx: Tensor?, gradients: LayerWeights, weightName: String, biasName: String?, rows: Int
) {
    linearBackward(
        dinp: dx?.data, dweight: gradients[weightName]?.data, dbias: biasName.flatMap { gradients[$0]?.data },
        dout: dy.data, inp: x.data, weight: weight.data, B: rows, C: weight.shape[1], OC: weight.shape[0])
}
