// GradientCheck: central finite differences and the error measure every kernel gradient test uses.

/// Central-difference gradient of `loss` with respect to `values[i]`, for every i.
func numericGradient(_ values: inout [Float], step: Float = 1e-2, _ loss: ([Float]) -> Double) -> [Double] {
    (0..<values.count).map { i in
        let saved = values[i]
        values[i] = saved + step
        let up = loss(values)
        values[i] = saved - step
        let down = loss(values)
        values[i] = saved
        return (up - down) / Double(2 * step)
    }
}

/// Largest |a − n| / max(|n|, 1e-2) between analytic and numeric gradients.
func gradientError(_ analytic: [Float], _ numeric: [Double]) -> Double {
    zip(analytic, numeric).map { abs(Double($0) - $1) / max(abs($1), 1e-2) }.max() ?? 0
}

/// Σ outᵢ·gᵢ in double: a scalar loss whose gradient with respect to out is g.
func dot(_ out: [Float], _ g: [Float]) -> Double { zip(out, g).reduce(0) { $0 + Double($1.0) * Double($1.1) } }

func zeros(_ count: Int) -> [Float] { [Float](repeating: 0, count: count) }
