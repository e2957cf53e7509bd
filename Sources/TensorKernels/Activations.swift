// Activations: GELU (erf and tanh forms, as transformers' "gelu" and "gelu_new"), SiLU and SwiGLU, forward and backward.
import Foundation

/// Which GELU: the exact erf form (BERT's `gelu`) or the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
public enum GELUForm: Sendable { case erf, tanh }

private let sqrt2OverPi: Float = 0.7978845608028654
private let inverseSqrt2: Float = 0.7071067811865476
private let inverseSqrt2Pi: Float = 0.3989422804014327

/// out (N) = GELU(inp).
public func geluForward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, N: Int, form: GELUForm) {
    switch form {
    case .erf:
        for i in 0..<N { out[i] = 0.5 * inp[i] * (1 + fastErf(inp[i] * inverseSqrt2)) }
    case .tanh:
        for i in 0..<N {
            let x = inp[i]
            out[i] = 0.5 * x * (1 + Foundation.tanh(sqrt2OverPi * (x + 0.044715 * x * x * x)))
        }
    }
}

/// dinp (N) += dout · GELU′(inp).
public func geluBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, N: Int, form: GELUForm) {
    switch form {
    case .erf:
        for i in 0..<N {
            let x = inp[i]
            let cdf = 0.5 * (1 + fastErf(x * inverseSqrt2))
            let pdf = inverseSqrt2Pi * fastExp(-0.5 * x * x)
            dinp[i] += dout[i] * (cdf + x * pdf)
        }
    case .tanh:
        for i in 0..<N {
            let x = inp[i]
            let u = sqrt2OverPi * (x + 0.044715 * x * x * x)
            let t = Foundation.tanh(u)
            let du = sqrt2OverPi * (1 + 3 * 0.044715 * x * x)
            dinp[i] += dout[i] * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        }
    }
}

/// out (N) = SiLU(inp) = inp · σ(inp).
public func siluForward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, N: Int) {
    for i in 0..<N { out[i] = inp[i] / (1 + fastExp(-inp[i])) }
}

/// dinp (N) += dout · σ(x)·(1 + x·(1 − σ(x))).
public func siluBackward(dinp: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, inp: UnsafePointer<Float>, N: Int) {
    for i in 0..<N {
        let sigma = 1 / (1 + fastExp(-inp[i]))
        dinp[i] += dout[i] * sigma * (1 + inp[i] * (1 - sigma))
    }
}

/// out (N) = SiLU(gate) · up: the Llama MLP's gated activation (SwiGLU).
public func swigluForward(_ out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, N: Int) {
    for i in 0..<N { out[i] = gate[i] / (1 + fastExp(-gate[i])) * up[i] }
}

/// dgate (N) += dout·up·SiLU′(gate), dup (N) += dout·SiLU(gate).
public func swigluBackward(
    dgate: UnsafeMutablePointer<Float>, dup: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>,
    gate: UnsafePointer<Float>, up: UnsafePointer<Float>, N: Int
) {
    for i in 0..<N {
        let x = gate[i], sigma = 1 / (1 + fastExp(-x))
        dgate[i] += dout[i] * up[i] * sigma * (1 + x * (1 - sigma))
        dup[i] += dout[i] * x * sigma
    }
}
