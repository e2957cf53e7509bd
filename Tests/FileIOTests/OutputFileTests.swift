// OutputFileTests: bytes written through the cache and around it (O_DIRECT) land in the file exactly, flushes and resumes included.
@testable import FileIO
import Foundation
import Glibc
import Testing

@Suite("Output files")
struct OutputFileTests {
    /// Pieces of awkward sizes: single bytes, around the 4 KiB alignment, and larger than the 4 MiB staging buffer.
    static let pieceSizes = [1, 4095, 4097, 3, 5 << 20, 8192, 17, 4 << 20, 123_457]

    /// Bytes from a 64-bit LCG's high bits: no short period, so a byte staged at the wrong offset shows.
    func pieces(seed: UInt64) -> [[UInt8]] {
        var state = seed
        return Self.pieceSizes.map { size in
            (0..<size).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return UInt8(truncatingIfNeeded: state >> 56)
            }
        }
    }

    func scratchPath(_ name: String) throws -> String {
        let directory = NSTemporaryDirectory() + "/streammerge-output-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory + "/" + name
    }

    @Test("Every byte lands in order, with flushes between pieces, through the cache and around it", arguments: [false, true])
    func writesInOrder(bypassingCache: Bool) throws {
        let path = try scratchPath("out.bin")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let file = try OutputFile(path: path, bypassingCache: bypassingCache)
        #expect(file.isDirect == bypassingCache, "this machine kind's temporary directory supports O_DIRECT")
        var expected: [UInt8] = []
        for (index, piece) in pieces(seed: 1).enumerated() {
            try piece.withUnsafeBytes { try file.write($0) }
            expected += piece
            if index % 3 == 1 {
                try file.flush()
                // After a flush every byte is in the file, under the temporary name.
                #expect(try Data(contentsOf: URL(fileURLWithPath: file.temporaryPath)) == Data(expected))
            }
        }
        #expect(file.position == expected.count)
        try file.commit()
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(expected))
        #expect(!FileManager.default.fileExists(atPath: file.temporaryPath))
    }

    @Test("A file abandoned after a flush resumes at an unaligned offset and ends with the same bytes")
    func resumesAtUnalignedOffset() throws {
        let path = try scratchPath("out.bin")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let all = pieces(seed: 2)
        var expected: [UInt8] = []
        var offset = 0
        do {
            let file = try OutputFile(path: path, bypassingCache: true)
            for piece in all[0..<4] {
                try piece.withUnsafeBytes { try file.write($0) }
                expected += piece
            }
            try file.flush()
            offset = file.position
            // Bytes written after the flush are lost with the process; the resume truncates them.
            try all[4].withUnsafeBytes { try file.write(UnsafeRawBufferPointer(rebasing: $0[0..<10_000])) }
        }
        #expect(offset % 4096 != 0)
        let resumed = try OutputFile(path: path, resumingAt: offset, bypassingCache: true)
        for piece in all[4...] {
            try piece.withUnsafeBytes { try resumed.write($0) }
            expected += piece
        }
        try resumed.commit()
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(expected))
    }

    @Test("A device that refuses a direct write's alignment gets the rest of the file through the cache")
    func fallsBackOnRefusedAlignment() throws {
        let path = try scratchPath("out.bin")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        #expect(fd >= 0)
        defer { Glibc.close(fd) }
        // 256-byte alignment: the full staging buffer (4 MiB at offset 0) suits the 512-byte blocks of
        // this machine's disk; the 768 bytes flushed after it do not, and the kernel says EINVAL.
        let direct = try #require(try DirectWrites(path: path, at: 0, buffered: fd, alignment: 256))
        let all = pieces(seed: 3)
        let bytes = Array((all[4] + all[3] + all[2]).prefix(DirectWrites.stagingSize + 768 + 100))
        try bytes.withUnsafeBytes { try direct.write(UnsafeRawBufferPointer(rebasing: $0[0..<DirectWrites.stagingSize])) }
        #expect(direct.isDirect, "whole 4 MiB at offset 0 goes direct")
        try bytes.withUnsafeBytes { try direct.write(UnsafeRawBufferPointer(rebasing: $0[DirectWrites.stagingSize...])) }
        try direct.flush()
        #expect(!direct.isDirect, "a 768-byte direct write is refused on 512-byte blocks")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(bytes))
    }
}
