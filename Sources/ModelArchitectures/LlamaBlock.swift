// LlamaBlock: a pre-norm Llama/Mistral/Qwen2 decoder layer (RMSNorm, GQA attention with RoPE, SwiGLU MLP) — forward with tape, and backward.
import TensorKernels

/// `layers.i` of the Llama family, as transformers' LlamaDecoderLayer computes it (eager attention):
/// h = x + Attn(RoPE(q), RoPE(k), v)·Woᵀ with q, k, v from RMSNorm(x); out = h + (SiLU(n·Wgᵀ) ⊙ n·Wuᵀ)·Wdᵀ
/// with n = RMSNorm(h). Biases are used where the checkpoint has them (Qwen2's q/k/v).
public struct LlamaBlock: TransformerBlock {
    let config: ArchitectureConfig
    let norm1, wq, wk, wv, wo, norm2, wGate, wUp, wDown: Tensor
    let bq, bk, bv, bo, bGate, bUp, bDown: Tensor?

    public init(weights: LayerWeights, config: ArchitectureConfig) throws(ArchitectureError) {
        self.config = config
        let (H, I, qWidth, kvWidth) = (config.hidden, config.intermediate, config.heads * config.headDim, config.kvHeads * config.headDim)
        norm1 = try weights.require("input_layernorm.weight", [H])
        wq = try weights.require("self_attn.q_proj.weight", [qWidth, H]); bq = try weights.optional("self_attn.q_proj.bias", [qWidth])
        wk = try weights.require("self_attn.k_proj.weight", [kvWidth, H]); bk = try weights.optional("self_attn.k_proj.bias", [kvWidth])
        wv = try weights.require("self_attn.v_proj.weight", [kvWidth, H]); bv = try weights.optional("self_attn.v_proj.bias", [kvWidth])
        wo = try weights.require("self_attn.o_proj.weight", [H, qWidth]); bo = try weights.optional("self_attn.o_proj.bias", [H])
        norm2 = try weights.require("post_attention_layernorm.weight", [H])
        wGate = try weights.require("mlp.gate_proj.weight", [I, H]); bGate = try weights.optional("mlp.gate_proj.bias", [I])
        wUp = try weights.require("mlp.up_proj.weight", [I, H]); bUp = try weights.optional("mlp.up_proj.bias", [I])
        wDown = try weights.require("mlp.down_proj.weight", [H, I]); bDown = try weights.optional("mlp.down_proj.bias", [H])
    }

    final class Tape: BlockTape {
        let input: Tensor, rstd1: Tensor, normed1: Tensor, q: Tensor, k: Tensor, v: Tensor, probabilities: Tensor, context: Tensor
        let hidden: Tensor, rstd2: Tensor, normed2: Tensor, gate: Tensor, up: Tensor, gated: Tensor, output: Tensor
        init(input: Tensor, rstd1: Tensor, normed1: Tensor, q: Tensor, k: Tensor, v: Tensor, probabilities: Tensor, context: Tensor,
             hidden: Tensor, rstd2: Tensor, normed2: Tensor, gate: Tensor, up: Tensor, gated: Tensor, output: Tensor) {
            self.input = input; self.rstd1 = rstd1; self.normed1 = normed1; self.q = q; self.k = k; self.v = v
            self.probabilities = probabilities; self.context = context; self.hidden = hidden; self.rstd2 = rstd2
            self.normed2 = normed2; self.gate = gate; self.up = up; self.gated = gated; self.output = output
        }
    }

    private func attentionShape(_ c: BlockContext) -> AttentionShape {
        AttentionShape(B: c.B, S: c.S, heads: config.heads, kvHeads: config.kvHeads, headDim: config.headDim)
    }

    public func forward(_ x: Tensor, context c: BlockContext) -> BlockTape {
        let (N, H, I) = (c.rows, config.hidden, config.intermediate)
        let rope = c.rope!
        let rstd1 = Tensor(shape: [N]), normed1 = Tensor(shape: [N, H])
        rmsNormForward(normed1.data, rstd: rstd1.data, x.data, norm1.data, B: N, C: H, eps: config.normEps)
        let q = linear(normed1, wq, bq, rows: N), k = linear(normed1, wk, bk, rows: N), v = linear(normed1, wv, bv, rows: N)
        ropeForward(q.data, tables: rope, B: c.B, S: c.S, heads: config.heads)
        ropeForward(k.data, tables: rope, B: c.B, S: c.S, heads: config.kvHeads)
        let shape = attentionShape(c)
        let probabilities = Tensor(shape: [shape.probabilityCount]), ctx = Tensor(shape: [N, config.heads * config.headDim])
        attentionForward(ctx.data, probabilities: probabilities.data, q: q.data, k: k.data, v: v.data,
                         keyMask: c.attentionMask, causal: true, shape: shape)
        let hidden = linear(ctx, wo, bo, rows: N)
        addInPlace(hidden.data, x.data, N: N * H)
        let rstd2 = Tensor(shape: [N]), normed2 = Tensor(shape: [N, H])
        rmsNormForward(normed2.data, rstd: rstd2.data, hidden.data, norm2.data, B: N, C: H, eps: config.normEps)
        let gate = linear(normed2, wGate, bGate, rows: N), up = linear(normed2, wUp, bUp, rows: N), gated = Tensor(shape: [N, I])
        swigluForward(gated.data, gate: gate.data, up: up.data, N: N * I)
        let out = linear(gated, wDown, bDown, rows: N)
        addInPlace(out.data, hidden.data, N: N * H)
        return Tape(input: x, rstd1: rstd1, normed1: normed1, q: q, k: k, v: v, probabilities: probabilities, context: ctx,
                    hidden: hidden, rstd2: rstd2, normed2: normed2, gate: gate, up: up, gated: gated, output: out)
    }

    public func linearInputs(_ tape: BlockTape) -> [(weights: [String], input: Tensor)] {
        let t = tape as! Tape
        return [
            (["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"], t.normed1),
            (["self_attn.o_proj.weight"], t.context),
            (["mlp.gate_proj.weight", "mlp.up_proj.weight"], t.normed2),
            (["mlp.down_proj.weight"], t.gated),
        ]
    }

    /// The input's gradient is always computed: the first RMSNorm's weight gradient needs the
    /// products that lead to it.
    public func backward(_ tape: BlockTape, dout: Tensor, gradients g: LayerWeights, context c: BlockContext, inputGradient: Bool) -> Tensor? {
        let t = tape as! Tape
        let (N, H, I) = (c.rows, config.hidden, config.intermediate)
        let rope = c.rope!
        // MLP branch; the residual passes dout straight to the attention sum h.
        let dHidden = Tensor(shape: [N, H])
        addInPlace(dHidden.data, dout.data, N: N * H)
        let dGated = Tensor(shape: [N, I])
        linearGradients(dout, x: t.gated, weight: wDown, dx: dGated, gradients: g, weightName: "mlp.down_proj.weight",
                        biasName: "mlp.down_proj.bias", rows: N)
        let dGate = Tensor(shape: [N, I]), dUp = Tensor(shape: [N, I])
        swigluBackward(dgate: dGate.data, dup: dUp.data, dout: dGated.data, gate: t.gate.data, up: t.up.data, N: N * I)
        let dNormed2 = Tensor(shape: [N, H])
        linearGradients(dGate, x: t.normed2, weight: wGate, dx: dNormed2, gradients: g, weightName: "mlp.gate_proj.weight",
                        biasName: "mlp.gate_proj.bias", rows: N)
        linearGradients(dUp, x: t.normed2, weight: wUp, dx: dNormed2, gradients: g, weightName: "mlp.up_proj.weight",
                        biasName: "mlp.up_proj.bias", rows: N)
        rmsNormBackward(dinp: dHidden.data, dweight: g["post_attention_layernorm.weight"]?.data, dout: dNormed2.data,
                        inp: t.hidden.data, weight: norm2.data, rstd: t.rstd2.data, B: N, C: H)
        // Attention branch; the residual passes dHidden straight to the block input.
        let dx = Tensor(shape: [N, H])
        addInPlace(dx.data, dHidden.data, N: N * H)
        let dContext = Tensor(shape: t.context.shape)
        linearGradients(dHidden, x: t.context, weight: wo, dx: dContext, gradients: g, weightName: "self_attn.o_proj.weight",
                        biasName: "self_attn.o_proj.bias", rows: N)
        let dq = Tensor(shape: t.q.shape), dk = Tensor(shape: t.k.shape), dv = Tensor(shape: t.v.shape)
        attentionBackward(dq: dq.data, dk: dk.data, dv: dv.data, dctx: dContext.data, q: t.q.data, k: t.k.data, v: t.v.data,
                          probabilities: t.probabilities.data, shape: attentionShape(c))
        ropeBackward(dq.data, tables: rope, B: c.B, S: c.S, heads: config.heads)
        ropeBackward(dk.data, tables: rope, B: c.B, S: c.S, heads: config.kvHeads)
        let dNormed1 = Tensor(shape: [N, H])
        for (dy, w, name) in [(dq, wq, "q_proj"), (dk, wk, "k_proj"), (dv, wv, "v_proj")] {
            linearGradients(dy, x: t.normed1, weight: w, dx: dNormed1, gradients: g, weightName: "self_attn.\(name).weight",
                            biasName: "self_attn.\(name).bias", rows: N)
        }
        rmsNormBackward(dinp: dx.data, dweight: g["input_layernorm.weight"]?.data, dout: dNormed1.data,
                        inp: t.input.data, weight: norm1.data, rstd: t.rstd1.data, B: N, C: H)
        return dx
    }
}
