// Tensor: an owned, contiguous, zero-initialised f32 buffer with a shape — the unit layers pass around.

/// Row-major f32 storage that frees itself. Kernels take raw pointers (as llm.c's do); this type only
/// owns memory and remembers the shape, so a layer's activations and gradients are easy to keep.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    public init(shape: [Int]) {
        self.shape = shape
        count = shape.reduce(1, *)
        data = .allocate(capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *), "Tensor: \(values.count) values for shape \(shape)")
        self.init(shape: shape)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { data.deallocate() }

    public var values: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    public func zero() { data.update(repeating: 0, count: count) }

    public var byteCount: Int { count * MemoryLayout<Float>.size }
}

/// out (N) += inp (N): residual connections (their backward passes the gradient through to both sides).
public func addInPlace(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, N: Int) {
    for i in 0..<N { out[i] += inp[i] }
}
