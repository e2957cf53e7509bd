// FineTuneBlock: a block of a fine-tune's values, as f32 or as the bf16 bits read from its file.

/// A block of a fine-tune's values that loops read as f32, element by element or eight at a time.
/// Loops generic over it run on a bf16 input's bits where they were read, widening as they load,
/// instead of converting the block into memory first and reading it back.
protocol FineTuneBlock {
    subscript(_ j: Int) -> Float { get }
    func lanes(_ j: Int) -> SIMD8<Float>
}

struct FloatBlock: FineTuneBlock {
    let values: UnsafePointer<Float>

    subscript(j: Int) -> Float { values[j] }

    @inline(__always)
    func lanes(_ j: Int) -> SIMD8<Float> { UnsafeRawPointer(values + j).loadUnaligned(as: SIMD8<Float>.self) }
}

/// bf16 bits; widening to f32 is exact (they become its top half).
struct BFloat16Block: FineTuneBlock {
    let bits: UnsafePointer<UInt16>

    subscript(j: Int) -> Float { Float(bitPattern: UInt32(bits[j]) << 16) }

    @inline(__always)
    func lanes(_ j: Int) -> SIMD8<Float> {
        let narrow = UnsafeRawPointer(bits + j).loadUnaligned(as: SIMD8<UInt16>.self)
        return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: narrow) &<< 16, to: SIMD8<Float>.self)
    }
}
