// ActivationCache: LZ4-compressed scratch files of activations, one chunk per batch, each chunk hash-checked on read.
import Checksum
import FileIO
import Foundation
import SafetensorsFormat

/// How activations are stored: f32, or bf16 (rounded to nearest even) at half the bytes.
public enum ActivationDType: String, Sendable {
    case float32, bfloat16

    var code: UInt8 { self == .float32 ? 0 : 1 }
    var size: Int { self == .float32 ? 4 : 2 }
    var dtype: DType { self == .float32 ? .f32 : .bf16 }
}

/// Errors reading a cache file, naming the file and chunk.
public enum ActivationCacheError: Error, CustomStringConvertible, Equatable {
    case corrupt(path: String, chunk: Int, detail: String)
    case malformed(path: String, detail: String)

    public var description: String {
        switch self {
        case let .corrupt(path, chunk, detail): "\(path): activation cache chunk \(chunk) is corrupt: \(detail)"
        case let .malformed(path, detail): "\(path): not a valid activation cache: \(detail)"
        }
    }
}

/// File layout (little-endian):
///
///     "SMAC" | u16 version (1) | u8 dtype (0 f32, 1 bf16) | u8 filter (0 none, 1 byte-shuffle)
///     | u32 example count | u32 rank | u64 × rank row shape
///     then per chunk: u32 raw bytes | u32 compressed bytes | u64 XXH64 of the raw bytes | LZ4 block
///
/// "Raw" is the activations in the stored dtype before the filter. Byte-shuffle groups the k-th byte
/// of every element together; exponent and sign bytes repeat across activations, so LZ4 finds them.
enum CacheFormat {
    static let magic: [UInt8] = Array("SMAC".utf8)
    static let version: UInt16 = 1
    static let chunkHeaderSize = 16
}

/// Writes one cache file: chunks appended in order under a temporary name, renamed by `finish()`.
public final class ActivationCacheWriter {
    public let path: String
    let dtype: ActivationDType
    let shuffle: Bool
    private let file: OutputFile
    private var raw: UnsafeMutableRawBufferPointer
    private var filtered: UnsafeMutableRawBufferPointer
    private var compressed: UnsafeMutableRawBufferPointer
    public private(set) var rawBytes = 0
    public private(set) var storedBytes = 0
    /// Seconds spent converting, filtering and compressing (for the benchmark's cache-overhead figure).
    public private(set) var codecSeconds = 0.0

    public init(path: String, dtype: ActivationDType, shuffle: Bool = true, exampleCount: Int, rowShape: [Int]) throws {
        self.path = path
        self.dtype = dtype
        self.shuffle = shuffle
        file = try OutputFile(path: path)
        raw = .allocate(byteCount: 0, alignment: 64)
        filtered = .allocate(byteCount: 0, alignment: 64)
        compressed = .allocate(byteCount: 0, alignment: 64)
        var header = CacheFormat.magic
        appendLittleEndian(&header, CacheFormat.version)
        header += [dtype.code, shuffle ? 1 : 0]
        appendLittleEndian(&header, UInt32(exampleCount))
        appendLittleEndian(&header, UInt32(rowShape.count))
        for dimension in rowShape { appendLittleEndian(&header, UInt64(dimension)) }
        try header.withUnsafeBytes { try file.write($0) }
    }

    deinit {
        raw.deallocate()
        filtered.deallocate()
        compressed.deallocate()
    }

    /// Appends one chunk holding `count` activations.
    public func append(_ values: UnsafePointer<Float>, count: Int) throws {
        let started = DispatchTime.now()
        let byteCount = count * dtype.size
        if raw.count < byteCount {
            for buffer in [raw, filtered, compressed] { buffer.deallocate() }
            raw = .allocate(byteCount: byteCount, alignment: 64)
            filtered = .allocate(byteCount: byteCount, alignment: 64)
            compressed = .allocate(byteCount: LZ4Block.bound(byteCount), alignment: 64)
        }
        convertFromFloat(raw.baseAddress!, from: values, dtype: dtype.dtype, count: count)
        let rawView = UnsafeRawBufferPointer(rebasing: raw[0..<byteCount])
        let hash = xxh64(rawView)
        let input: UnsafeRawBufferPointer
        if shuffle {
            byteShuffle(rawView, into: filtered.baseAddress!, elementSize: dtype.size)
            input = UnsafeRawBufferPointer(rebasing: filtered[0..<byteCount])
        } else {
            input = rawView
        }
        let size = LZ4Block.compress(input, into: compressed)
        codecSeconds += Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e9
        var header: [UInt8] = []
        appendLittleEndian(&header, UInt32(byteCount))
        appendLittleEndian(&header, UInt32(size))
        appendLittleEndian(&header, hash)
        try header.withUnsafeBytes { try file.write($0) }
        try file.write(UnsafeRawBufferPointer(rebasing: compressed[0..<size]))
        rawBytes += byteCount
        storedBytes += size + CacheFormat.chunkHeaderSize
    }

    /// Makes the file visible under its final name. A crash before this leaves only the temporary file.
    public func finish() throws { try file.commit() }
}

/// Reads chunks of a cache file in any order, checking each chunk's hash.
public final class ActivationCacheReader {
    public let path: String
    public let dtype: ActivationDType
    public let exampleCount: Int
    public let rowShape: [Int]
    private let shuffle: Bool
    private let file: PositionalReader
    /// (offset of the LZ4 block, raw bytes, compressed bytes, hash) per chunk.
    private let chunks: [(offset: Int, raw: Int, compressed: Int, hash: UInt64)]
    private var compressed = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 64)
    private var raw = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 64)
    private var filtered = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 64)
    public private(set) var codecSeconds = 0.0

    public init(path: String) throws {
        self.path = path
        let file = try PositionalReader(path: path)
        self.file = file
        func fail(_ detail: String) -> ActivationCacheError { .malformed(path: path, detail: detail) }
        var fixed = [UInt8](repeating: 0, count: 16)
        guard try fixed.withUnsafeMutableBytes({ try file.read(into: $0.baseAddress!, count: 16, at: 0) }),
              Array(fixed[0..<4]) == CacheFormat.magic else { throw fail("bad magic") }
        guard load(fixed, 4, as: UInt16.self) == CacheFormat.version else { throw fail("unsupported version") }
        guard let dtype = [ActivationDType.float32, .bfloat16].first(where: { $0.code == fixed[6] }), fixed[7] <= 1 else {
            throw fail("unknown dtype or filter")
        }
        let shuffle = fixed[7] == 1
        let exampleCount = Int(load(fixed, 8, as: UInt32.self))
        let rank = Int(load(fixed, 12, as: UInt32.self))
        guard rank <= 8 else { throw fail("row rank \(rank)") }
        var dims = [UInt8](repeating: 0, count: 8 * rank)
        guard try dims.withUnsafeMutableBytes({ try file.read(into: $0.baseAddress!, count: 8 * rank, at: 16) }) else { throw fail("truncated header") }
        let rowShape = (0..<rank).map { Int(load(dims, 8 * $0, as: UInt64.self)) }
        var chunks: [(offset: Int, raw: Int, compressed: Int, hash: UInt64)] = []
        var offset = 16 + 8 * rank
        var header = [UInt8](repeating: 0, count: CacheFormat.chunkHeaderSize)
        while offset < file.size {
            guard try header.withUnsafeMutableBytes({ try file.read(into: $0.baseAddress!, count: CacheFormat.chunkHeaderSize, at: offset) }) else {
                throw ActivationCacheError.corrupt(path: path, chunk: chunks.count, detail: "truncated chunk header")
            }
            let rawSize = Int(load(header, 0, as: UInt32.self)), size = Int(load(header, 4, as: UInt32.self))
            let start = offset + CacheFormat.chunkHeaderSize
            guard start + size <= file.size, rawSize % dtype.size == 0 else {
                throw ActivationCacheError.corrupt(path: path, chunk: chunks.count, detail: "chunk runs past the end of the file")
            }
            chunks.append((start, rawSize, size, load(header, 8, as: UInt64.self)))
            offset = start + size
        }
        self.dtype = dtype
        self.shuffle = shuffle
        self.exampleCount = exampleCount
        self.rowShape = rowShape
        self.chunks = chunks
    }

    deinit {
        compressed.deallocate()
        raw.deallocate()
        filtered.deallocate()
    }

    public var chunkCount: Int { chunks.count }

    /// Elements in chunk `index`.
    public func elementCount(ofChunk index: Int) -> Int { chunks[index].raw / dtype.size }

    /// Decompresses chunk `index` into `destination` as f32, after checking its hash.
    public func read(chunk index: Int, into destination: UnsafeMutablePointer<Float>) throws {
        let chunk = chunks[index]
        if compressed.count < chunk.compressed {
            compressed.deallocate()
            compressed = .allocate(byteCount: chunk.compressed, alignment: 64)
        }
        if raw.count < chunk.raw {
            raw.deallocate()
            filtered.deallocate()
            raw = .allocate(byteCount: chunk.raw, alignment: 64)
            filtered = .allocate(byteCount: chunk.raw, alignment: 64)
        }
        guard try file.read(into: compressed.baseAddress!, count: chunk.compressed, at: chunk.offset) else {
            throw ActivationCacheError.corrupt(path: path, chunk: index, detail: "truncated")
        }
        let started = DispatchTime.now()
        let target = shuffle ? filtered : raw
        guard LZ4Block.decompress(UnsafeRawBufferPointer(rebasing: compressed[0..<chunk.compressed]),
                                  into: UnsafeMutableRawBufferPointer(rebasing: target[0..<chunk.raw])) else {
            throw ActivationCacheError.corrupt(path: path, chunk: index, detail: "LZ4 block does not decode to \(chunk.raw) bytes")
        }
        if shuffle {
            byteUnshuffle(UnsafeRawBufferPointer(rebasing: filtered[0..<chunk.raw]), into: raw.baseAddress!, elementSize: dtype.size)
        }
        let rawView = UnsafeRawBufferPointer(rebasing: raw[0..<chunk.raw])
        guard xxh64(rawView) == chunk.hash else {
            throw ActivationCacheError.corrupt(path: path, chunk: index, detail: "XXH64 mismatch")
        }
        convertToFloat(destination, from: rawView.baseAddress!, dtype: dtype.dtype, count: chunk.raw / dtype.size)
        codecSeconds += Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e9
    }
}

private func appendLittleEndian<T: FixedWidthInteger>(_ bytes: inout [UInt8], _ value: T) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
}

private func load<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, as: T.Type) -> T {
    bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
}

/// out[b·n + i] = in[i·size + b]: byte planes, most repetitive (exponents) ending up contiguous.
func byteShuffle(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer, elementSize: Int) {
    let n = input.count / elementSize
    let source = input.baseAddress!.assumingMemoryBound(to: UInt8.self), target = output.assumingMemoryBound(to: UInt8.self)
    for b in 0..<elementSize {
        let plane = target + b * n
        for i in 0..<n { plane[i] = source[i * elementSize + b] }
    }
}

/// The inverse of `byteShuffle`.
func byteUnshuffle(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer, elementSize: Int) {
    let n = input.count / elementSize
    let source = input.baseAddress!.assumingMemoryBound(to: UInt8.self), target = output.assumingMemoryBound(to: UInt8.self)
    for b in 0..<elementSize {
        let plane = source + b * n
        for i in 0..<n { target[i * elementSize + b] = plane[i] }
    }
}
