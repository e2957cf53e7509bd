// RoPE: rotary position embeddings as transformers applies them (rotate_half layout), default and llama3 frequencies.
import Foundation

/// How inverse frequencies are derived from rope_theta (config.json `rope_scaling`).
public enum RoPEScaling: Sendable, Equatable {
    case none
    /// Llama 3.1's rule: long wavelengths divided by `factor`, short ones kept, the band between smoothed.
    case llama3(factor: Double, lowFrequencyFactor: Double, highFrequencyFactor: Double, originalMaxPositions: Double)
}

/// cos and sin tables [positions, headDim] for positions 0..<positions: the angle for column i is
/// position · invFreq[i mod headDim/2], both halves repeating the same frequencies (transformers'
/// `cat((freqs, freqs))`). Angles are formed in double and rounded once, so tables agree with a
/// float64 reference to f32 precision.
public struct RoPETables: Sendable {
    public let headDim: Int
    public let positions: Int
    public let cos: [Float]
    public let sin: [Float]
    public let inverseFrequencies: [Double]

    public init(headDim: Int, positions: Int, theta: Double, scaling: RoPEScaling = .none) {
        self.headDim = headDim
        self.positions = positions
        let half = headDim / 2
        var frequencies = (0..<half).map { 1 / Foundation.pow(theta, Double(2 * $0) / Double(headDim)) }
        if case let .llama3(factor, low, high, original) = scaling {
            let lowWavelength = original / low, highWavelength = original / high
            frequencies = frequencies.map { f in
                let wavelength = 2 * Double.pi / f
                if wavelength < highWavelength { return f }
                if wavelength > lowWavelength { return f / factor }
                let smooth = (original / wavelength - low) / (high - low)
                return (1 - smooth) * f / factor + smooth * f
            }
        }
        inverseFrequencies = frequencies
        var cosTable = [Float](repeating: 0, count: positions * headDim), sinTable = cosTable
        for p in 0..<positions {
            for i in 0..<half {
                let angle = Double(p) * frequencies[i]
                let c = Float(Foundation.cos(angle)), s = Float(Foundation.sin(angle))
                cosTable[p * headDim + i] = c
                cosTable[p * headDim + i + half] = c
                sinTable[p * headDim + i] = s
                sinTable[p * headDim + i + half] = s
            }
        }
        cos = cosTable
        sin = sinTable
    }
}

/// Rotates x [B, S, heads, headDim] in place: x′ = x·cos + rotate_half(x)·sin at each token's position
/// (position = index in the sequence, as transformers uses without a cache).
public func ropeForward(_ x: UnsafeMutablePointer<Float>, tables: RoPETables, B: Int, S: Int, heads: Int) {
    rotate(x, tables: tables, B: B, S: S, heads: heads, direction: 1)
}

/// The gradient through the rotation is the inverse rotation (x′ = R·x with R orthogonal, so dx = Rᵀ·dx′); in place.
public func ropeBackward(_ dx: UnsafeMutablePointer<Float>, tables: RoPETables, B: Int, S: Int, heads: Int) {
    rotate(dx, tables: tables, B: B, S: S, heads: heads, direction: -1)
}

private func rotate(_ x: UnsafeMutablePointer<Float>, tables: RoPETables, B: Int, S: Int, heads: Int, direction: Float) {
    precondition(S <= tables.positions, "RoPE: sequence of \(S) tokens exceeds the \(tables.positions) precomputed positions")
    let d = tables.headDim, half = d / 2
    tables.cos.withUnsafeBufferPointer { cosTable in
        tables.sin.withUnsafeBufferPointer { sinTable in
            for b in 0..<B {
                for s in 0..<S {
                    let c = cosTable.baseAddress! + s * d, sn = sinTable.baseAddress! + s * d
                    for h in 0..<heads {
                        let v = x + ((b * S + s) * heads + h) * d
                        for i in 0..<half {
                            let a = v[i], bb = v[i + half]
                            let si = direction * sn[i]
                            v[i] = a * c[i] - bb * si
                            v[i + half] = bb * c[i] + a * si
                        }
                    }
                }
            }
        }
    }
}
