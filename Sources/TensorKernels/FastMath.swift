// FastMath: branch-free exp and erf, and f32 reductions, written so that the compiler vectorises them.

/// eˣ for f32, within 2 ulp of the correctly rounded value over the whole range (denormal results
/// included; 0 below −103.97, +∞ above 88.72, as expf).
/// glibc's `expf` is a scalar call the loop vectoriser cannot see through; this one is plain
/// arithmetic with selects, so `for i in 0..<N { y[i] = fastExp(x[i]) }` becomes AVX code.
/// Method: n = round(x·log₂e), r = x − n·ln 2 in two parts (Cody–Waite: the high part has 9
/// significant bits, so n times it is exact), eʳ by its degree-7 Taylor polynomial (|r| ≤ ln 2 / 2:
/// truncation below 6e-9 relative), then the product with 2ⁿ as 2^⌊n/2⌋ · 2^(n−⌊n/2⌋), so both
/// factors are normal floats even where the result is not.
@inline(__always)
public func fastExp(_ x: Float) -> Float {
    let clamped = Swift.min(Swift.max(x, -104), 89)
    let n = (clamped * 1.44269504).rounded(.toNearestOrEven)
    let r = clamped.addingProduct(-n, 0.693359375).addingProduct(-n, -2.12194440e-4)
    var p: Float = 1.0 / 5040
    p = (1.0 / 720 as Float).addingProduct(p, r)
    p = (1.0 / 120 as Float).addingProduct(p, r)
    p = (1.0 / 24 as Float).addingProduct(p, r)
    p = (1.0 / 6 as Float).addingProduct(p, r)
    p = (0.5 as Float).addingProduct(p, r)
    p = (1 as Float).addingProduct(p, r)
    p = (1 as Float).addingProduct(p, r)
    let k = Int32(n), half = k >> 1
    let low = Float(bitPattern: UInt32(bitPattern: (half &+ 127) &<< 23))
    let high = Float(bitPattern: UInt32(bitPattern: (k &- half &+ 127) &<< 23))
    let y = p * low * high
    return x > 88.7228394 ? .infinity : (x < -103.972084 ? 0 : y)
}

/// erf(x) for f32 as PyTorch's vectorised CPU kernel computes it (ATen's `Vectorized<float>::erf`,
/// which transformers' GELU runs on CPU): Abramowitz & Stegun 7.1.26, t = 1/(1 + p|x|),
/// erf|x| = 1 − t·(a₁ + a₂t + a₃t² + a₄t³ + a₅t⁴)·e^(−x²), odd in x. The formula is within 1.5e-7 of
/// erf; evaluated in f32 it stays within 5e-7.
@inline(__always)
public func fastErf(_ x: Float) -> Float {
    let t = 1 / (1 as Float).addingProduct(0.3275911, abs(x))
    var r: Float = 1.061405429
    r = (-1.453152027 as Float).addingProduct(r, t)
    r = (1.421413741 as Float).addingProduct(r, t)
    r = (-0.284496736 as Float).addingProduct(r, t)
    r = (0.254829592 as Float).addingProduct(r, t)
    let magnitude = (1 as Float).addingProduct(-r * t, fastExp(-x * x))
    return x < 0 ? -magnitude : magnitude
}

/// Σ x[0..<n] in eight interleaved partial sums (lane j adds x[j], x[j+8], …), combined at the
/// end: an f32 reduction the compiler may not reorder by itself, so it is spelled out in SIMD.
@inline(__always)
func laneSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var lanes = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        lanes += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
        i += 8
    }
    var total = lanes.sum()
    while i < n { total += x[i]; i += 1 }
    return total
}

/// Σ a[i]·b[i] over 0..<n, in eight interleaved partial sums as `laneSum`.
@inline(__always)
func laneDot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var lanes = SIMD8<Float>(repeating: 0)
    var i = 0
    while i + 8 <= n {
        lanes += UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self) * UnsafeRawPointer(b + i).loadUnaligned(as: SIMD8<Float>.self)
        i += 8
    }
    var total = lanes.sum()
    while i < n { total += a[i] * b[i]; i += 1 }
    return total
}

/// max x[0..<n], eight lanes at a time (−∞ for n = 0).
@inline(__always)
func laneMax(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var lanes = SIMD8<Float>(repeating: -.infinity)
    var i = 0
    while i + 8 <= n {
        lanes = pointwiseMax(lanes, UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
        i += 8
    }
    var result = lanes.max()
    while i < n { result = Swift.max(result, x[i]); i += 1 }
    return result
}
