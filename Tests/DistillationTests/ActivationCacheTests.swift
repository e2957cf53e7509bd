// ActivationCacheTests: round trips in f32 and bf16, the byte-shuffle filter, and corruption reported by file and chunk.
import Foundation
@testable import Distillation
import Testing
import TestSupport

@Suite("Activation cache")
struct ActivationCacheTests {
    @Test("chunks round-trip exactly in f32 and rounded to nearest even in bf16, read in any order",
          arguments: [(ActivationDType.float32, true), (.float32, false), (.bfloat16, true)])
    func roundTrip(dtype: ActivationDType, shuffle: Bool) throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/a.smac"
        let chunks = [testValues(96, seed: 1, scale: 3), testValues(64, seed: 2), testValues(0, seed: 3), testValues(32, seed: 4)]
        let writer = try ActivationCacheWriter(path: path, dtype: dtype, shuffle: shuffle, exampleCount: 7, rowShape: [32])
        for chunk in chunks { try writer.append(chunk, count: chunk.count) }
        #expect(!FileManager.default.fileExists(atPath: path), "a cache file is visible only once finished")
        try writer.finish()
        let reader = try ActivationCacheReader(path: path)
        #expect(reader.chunkCount == 4 && reader.exampleCount == 7 && reader.rowShape == [32] && reader.dtype == dtype)
        for index in [3, 0, 2, 1] {
            var values = [Float](repeating: .nan, count: reader.elementCount(ofChunk: index))
            try reader.read(chunk: index, into: &values)
            let expected = dtype == .float32 ? chunks[index] : chunks[index].map { Float(bitPattern: UInt32(bf16(of: $0)) << 16) }
            #expect(values == expected)
        }
    }

    @Test("a flipped byte in a chunk is reported with the file and chunk number")
    func corruption() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/b.smac"
        let writer = try ActivationCacheWriter(path: path, dtype: .float32, exampleCount: 2, rowShape: [16])
        for seed in 0..<3 { try writer.append(testValues(64, seed: UInt64(seed)), count: 64) }
        try writer.finish()
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        // The last chunk's LZ4 block ends the file: corrupt its final byte.
        bytes[bytes.count - 1] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: path))
        let reader = try ActivationCacheReader(path: path)
        var values = [Float](repeating: 0, count: 64)
        try reader.read(chunk: 1, into: &values)
        #expect(throws: ActivationCacheError.self) { try reader.read(chunk: 2, into: &values) }
        do {
            try reader.read(chunk: 2, into: &values)
        } catch {
            #expect("\(error)".contains("b.smac") && "\(error)".contains("chunk 2"))
        }
    }
}

/// f32 → bf16 bits, round to nearest even (the reference rounding).
func bf16(of value: Float) -> UInt16 {
    let bits = value.bitPattern
    return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
}
