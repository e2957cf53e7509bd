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

/// Makes glibc keep freed activation buffers for reuse. By default every block above 128 KiB (soon
/// more, adaptively) is a fresh mmap: each training step then page-faults and the kernel zeroes tens
/// of MB it just released — 10 % of a block's forward+backward in a profile. With the mmap threshold
/// at glibc's maximum (32 MiB) and trimming deferred, a step reuses the previous step's memory. Peak
/// memory is unchanged; it is only returned to the system later.
public func keepFreedTensorMemoryForReuse() {
    // <malloc.h>'s M_TRIM_THRESHOLD and M_MMAP_THRESHOLD (glibc's parameter numbers).
    _ = glibcMallopt(-1, 512 << 20)
    _ = glibcMallopt(-3, 32 << 20)
}

/// Returns the free pages inside the heap to the system (glibc's `malloc_trim(0)`). Kept memory is
/// reused within a layer's steps, but from layer to layer weight-sized blocks land at different
/// places in the heap, and the holes they leave would otherwise keep the peak growing with depth.
/// Called once per layer, it costs a few page faults per layer, not per step.
public func releaseFreedTensorMemory() {
    _ = glibcMallocTrim(0)
}

@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32

/// glibc's `mallopt`, which the Glibc module does not import (it lives in <malloc.h>).
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
