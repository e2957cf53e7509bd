// DType: safetensors element types, their sizes, and conversion to and from f32 (round-to-nearest-even).

/// An element type as safetensors spells it. Floating types are converted to f32 for math;
/// integer and bool types are carried through byte for byte.
public enum DType: String, Sendable, CaseIterable, Codable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f64, .i64: 8
        case .f32, .i32: 4
        case .f16, .bf16, .i16: 2
        case .i8, .u8, .bool: 1
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .f64, .f32, .f16, .bf16: true
        default: false
        }
    }

    /// Parses the names a merge config uses for an output dtype (mergekit's and torch's spellings).
    public init?(configName: String) {
        switch configName.lowercased() {
        case "float32", "fp32", "f32": self = .f32
        case "bfloat16", "bf16": self = .bf16
        case "float16", "fp16", "f16", "half": self = .f16
        case "float64", "fp64", "f64": self = .f64
        default: return nil
        }
    }
}

// MARK: - Element conversion

/// bf16 → f32 is exact: the bf16 bits are the high half of the f32.
@inline(__always)
public func bfloat16ToFloat(_ bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// f32 → bf16, round-to-nearest-even on the dropped 16 bits; NaN becomes the canonical quiet NaN
/// 0x7FC0 as PyTorch produces it.
@inline(__always)
public func floatToBFloat16(_ value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return 0x7FC0 }
    let roundingBias = 0x7FFF &+ ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
}

/// Converts `count` elements of `dtype` starting at byte address `source` (any alignment) to f32.
/// Integer dtypes are converted by value (used only for inspection, never written back).
public func convertToFloat(
    _ destination: UnsafeMutablePointer<Float>, from source: UnsafeRawPointer, dtype: DType, count: Int
) {
    switch dtype {
    case .f32:
        // memcpy is alignment-agnostic and as fast as a typed copy.
        UnsafeMutableRawPointer(destination).copyMemory(from: source, byteCount: count * 4)
    case .bf16:
        if Int(bitPattern: source) % 2 == 0 {
            // The usual, aligned case: a typed loop the compiler vectorises.
            let halves = source.assumingMemoryBound(to: UInt16.self)
            for i in 0..<count { destination[i] = Float(bitPattern: UInt32(halves[i]) << 16) }
        } else {
            for i in 0..<count { destination[i] = bfloat16ToFloat(source.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
        }
    case .f16:
        for i in 0..<count { destination[i] = Float(source.loadUnaligned(fromByteOffset: 2 * i, as: Float16.self)) }
    case .f64:
        for i in 0..<count { destination[i] = Float(source.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
    case .i64:
        for i in 0..<count { destination[i] = Float(source.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self)) }
    case .i32:
        for i in 0..<count { destination[i] = Float(source.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
    case .i16:
        for i in 0..<count { destination[i] = Float(source.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self)) }
    case .i8:
        for i in 0..<count { destination[i] = Float(source.load(fromByteOffset: i, as: Int8.self)) }
    case .u8, .bool:
        for i in 0..<count { destination[i] = Float(source.load(fromByteOffset: i, as: UInt8.self)) }
    }
}

/// Converts `count` f32 values to a floating `dtype` at `destination`, rounding to nearest even.
public func convertFromFloat(
    _ destination: UnsafeMutableRawPointer, from source: UnsafePointer<Float>, dtype: DType, count: Int
) {
    switch dtype {
    case .f32:
        destination.copyMemory(from: source, byteCount: count * 4)
    case .bf16:
        for i in 0..<count { destination.storeBytes(of: floatToBFloat16(source[i]), toByteOffset: 2 * i, as: UInt16.self) }
    case .f16:
        for i in 0..<count { destination.storeBytes(of: Float16(source[i]), toByteOffset: 2 * i, as: Float16.self) }
    case .f64:
        for i in 0..<count { destination.storeBytes(of: Double(source[i]), toByteOffset: 8 * i, as: Double.self) }
    default:
        preconditionFailure("convertFromFloat: \(dtype) is not a floating-point dtype")
    }
}
