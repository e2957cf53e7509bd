// LZ4Block: the only file that touches liblz4 — one-shot block compression and checked decompression.
import CLZ4

enum LZ4Block {
    /// The largest compressed size of `count` bytes. The C function is `LZ4_compressBound`.
    static func bound(_ count: Int) -> Int { Int(LZ4_compressBound(Int32(count))) }

    /// Compresses `source` into `destination` (at least `bound(source.count)` bytes); returns the size.
    /// The C function is `LZ4_compress_default`.
    static func compress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> Int {
        let written = LZ4_compress_default(
            source.baseAddress?.assumingMemoryBound(to: CChar.self), destination.baseAddress?.assumingMemoryBound(to: CChar.self),
            Int32(source.count), Int32(destination.count))
        precondition(written > 0 || source.isEmpty, "LZ4_compress_default failed on \(source.count) bytes")
        return Int(written)
    }

    /// Decompresses exactly `destination.count` bytes; nil when the block is malformed or of another size.
    /// The C function is `LZ4_decompress_safe`, which never reads or writes out of bounds.
    static func decompress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        let produced = LZ4_decompress_safe(
            source.baseAddress?.assumingMemoryBound(to: CChar.self), destination.baseAddress?.assumingMemoryBound(to: CChar.self),
            Int32(source.count), Int32(destination.count))
        return Int(produced) == destination.count
    }
}
