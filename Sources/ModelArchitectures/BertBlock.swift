// BertBlock: a post-LayerNorm BERT/RoBERTa encoder layer (self-attention, GELU MLP) — forward with tape, and backward.
import TensorKernels

/// `encoder.layer.i` of BERT and RoBERTa, as transformers' BertLayer computes it in eval mode:
/// h = LN(x + Attn(x)·Woᵀ + bo); out = LN(h + GELU(h·Wiᵀ + bi)·W2ᵀ + b2).
public struct BertBlock: TransformerBlock {
    let config: ArchitectureConfig
    let wq, bq, wk, bk, wv, bv, wo, bo, ln1w, ln1b, wi, bi, w2, b2, ln2w, ln2b: Tensor

    public init(weights: LayerWeights, config: ArchitectureConfig) throws(ArchitectureError) {
        self.config = config
        let (H, I) = (config.hidden, config.intermediate)
        wq = try weights.require("attention.self.query.weight", [H, H]); bq = try weights.require("attention.self.query.bias", [H])
        wk = try weights.require("attention.self.key.weight", [H, H]); bk = try weights.require("attention.self.key.bias", [H])
        wv = try weights.require("attention.self.value.weight", [H, H]); bv = try weights.require("attention.self.value.bias", [H])
        wo = try weights.require("attention.output.dense.weight", [H, H]); bo = try weights.require("attention.output.dense.bias", [H])
        ln1w = try weights.require("attention.output.LayerNorm.weight", [H]); ln1b = try weights.require("attention.output.LayerNorm.bias", [H])
        wi = try weights.require("intermediate.dense.weight", [I, H]); bi = try weights.require("intermediate.dense.bias", [I])
        w2 = try weights.require("output.dense.weight", [H, I]); b2 = try weights.require("output.dense.bias", [H])
        ln2w = try weights.require("output.LayerNorm.weight", [H]); ln2b = try weights.require("output.LayerNorm.bias", [H])
    }

    final class Tape: BlockTape {
        let input: Tensor, q: Tensor, k: Tensor, v: Tensor, probabilities: Tensor, context: Tensor
        let residual1: Tensor, mean1: Tensor, rstd1: Tensor, hidden: Tensor
        let preActivation: Tensor, activation: Tensor, residual2: Tensor, mean2: Tensor, rstd2: Tensor
        let output: Tensor
        init(input: Tensor, q: Tensor, k: Tensor, v: Tensor, probabilities: Tensor, context: Tensor, residual1: Tensor,
             mean1: Tensor, rstd1: Tensor, hidden: Tensor, preActivation: Tensor, activation: Tensor, residual2: Tensor,
             mean2: Tensor, rstd2: Tensor, output: Tensor) {
            self.input = input; self.q = q; self.k = k; self.v = v; self.probabilities = probabilities; self.context = context
            self.residual1 = residual1; self.mean1 = mean1; self.rstd1 = rstd1; self.hidden = hidden
            self.preActivation = preActivation; self.activation = activation; self.residual2 = residual2
            self.mean2 = mean2; self.rstd2 = rstd2; self.output = output
        }
    }

    private func attentionShape(_ c: BlockContext) -> AttentionShape {
        AttentionShape(B: c.B, S: c.S, heads: config.heads, kvHeads: config.heads, headDim: config.hidden / config.heads)
    }

    public func forward(_ x: Tensor, context c: BlockContext) -> BlockTape {
        let (N, H, I) = (c.rows, config.hidden, config.intermediate)
        let q = linear(x, wq, bq, rows: N), k = linear(x, wk, bk, rows: N), v = linear(x, wv, bv, rows: N)
        let shape = attentionShape(c)
        let probabilities = Tensor(shape: [shape.probabilityCount]), ctx = Tensor(shape: [N, H])
        attentionForward(ctx.data, probabilities: probabilities.data, q: q.data, k: k.data, v: v.data,
                         keyMask: c.attentionMask, causal: false, shape: shape)
        let residual1 = linear(ctx, wo, bo, rows: N)
        addInPlace(residual1.data, x.data, N: N * H)
        let mean1 = Tensor(shape: [N]), rstd1 = Tensor(shape: [N]), hidden = Tensor(shape: [N, H])
        layerNormForward(hidden.data, mean: mean1.data, rstd: rstd1.data, residual1.data, ln1w.data, ln1b.data, B: N, C: H, eps: config.normEps)
        let pre = linear(hidden, wi, bi, rows: N), activation = Tensor(shape: [N, I])
        geluForward(activation.data, pre.data, N: N * I, form: config.gelu)
        let residual2 = linear(activation, w2, b2, rows: N)
        addInPlace(residual2.data, hidden.data, N: N * H)
        let mean2 = Tensor(shape: [N]), rstd2 = Tensor(shape: [N]), out = Tensor(shape: [N, H])
        layerNormForward(out.data, mean: mean2.data, rstd: rstd2.data, residual2.data, ln2w.data, ln2b.data, B: N, C: H, eps: config.normEps)
        return Tape(input: x, q: q, k: k, v: v, probabilities: probabilities, context: ctx, residual1: residual1, mean1: mean1,
                    rstd1: rstd1, hidden: hidden, preActivation: pre, activation: activation, residual2: residual2,
                    mean2: mean2, rstd2: rstd2, output: out)
    }

    public func linearInputs(_ tape: BlockTape) -> [(weights: [String], input: Tensor)] {
        let t = tape as! Tape
        return [
            (["attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight"], t.input),
            (["attention.output.dense.weight"], t.context),
            (["intermediate.dense.weight"], t.hidden),
            (["output.dense.weight"], t.activation),
        ]
    }

    public func backward(_ tape: BlockTape, dout: Tensor, gradients g: LayerWeights, context c: BlockContext, inputGradient: Bool) -> Tensor? {
        let t = tape as! Tape
        let (N, H, I) = (c.rows, config.hidden, config.intermediate)
        // Second LayerNorm; its input is the residual sum, so the gradient reaches both branches.
        let dResidual2 = Tensor(shape: [N, H])
        layerNormBackward(dinp: dResidual2.data, dweight: g["output.LayerNorm.weight"]!.data, dbias: g["output.LayerNorm.bias"]!.data,
                          dout: dout.data, inp: t.residual2.data, weight: ln2w.data, mean: t.mean2.data, rstd: t.rstd2.data, B: N, C: H)
        let dHidden = Tensor(shape: [N, H])
        addInPlace(dHidden.data, dResidual2.data, N: N * H)
        let dActivation = Tensor(shape: [N, I])
        linearGradients(dResidual2, x: t.activation, weight: w2, dx: dActivation, gradients: g,
                        weightName: "output.dense.weight", biasName: "output.dense.bias", rows: N)
        let dPre = Tensor(shape: [N, I])
        geluBackward(dinp: dPre.data, dout: dActivation.data, inp: t.preActivation.data, N: N * I, form: config.gelu)
        linearGradients(dPre, x: t.hidden, weight: wi, dx: dHidden, gradients: g,
                        weightName: "intermediate.dense.weight", biasName: "intermediate.dense.bias", rows: N)
        // First LayerNorm, then the attention output projection and attention itself.
        let dResidual1 = Tensor(shape: [N, H])
        layerNormBackward(dinp: dResidual1.data, dweight: g["attention.output.LayerNorm.weight"]!.data,
                          dbias: g["attention.output.LayerNorm.bias"]!.data, dout: dHidden.data, inp: t.residual1.data,
                          weight: ln1w.data, mean: t.mean1.data, rstd: t.rstd1.data, B: N, C: H)
        // q, k and v read the block input directly: without its gradient, three products go.
        let dx = inputGradient ? Tensor(shape: [N, H]) : nil
        if let dx { addInPlace(dx.data, dResidual1.data, N: N * H) }
        let dContext = Tensor(shape: [N, H])
        linearGradients(dResidual1, x: t.context, weight: wo, dx: dContext, gradients: g,
                        weightName: "attention.output.dense.weight", biasName: "attention.output.dense.bias", rows: N)
        let dq = Tensor(shape: [N, H]), dk = Tensor(shape: [N, H]), dv = Tensor(shape: [N, H])
        attentionBackward(dq: dq.data, dk: dk.data, dv: dv.data, dctx: dContext.data, q: t.q.data, k: t.k.data, v: t.v.data,
                          probabilities: t.probabilities.data, shape: attentionShape(c))
        for (dy, w, name) in [(dq, wq, "query"), (dk, wk, "key"), (dv, wv, "value")] {
            linearGradients(dy, x: t.input, weight: w, dx: dx, gradients: g,
                            weightName: "attention.self.\(name).weight", biasName: "attention.self.\(name).bias", rows: N)
        }
        return dx
    }
}
