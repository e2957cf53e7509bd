// OutputFileTests: bytes land in the file exactly and at once, with background syncs, resumes and a failing sync.
@testable import FileIO
import Foundation
import Glibc
import Testing

@Suite("Output files")
struct OutputFileTests {
    /// Pieces of awkward sizes: single bytes, around 4 KiB pages, and larger than the syncs' intervals.
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

    @Test("Every byte lands in order and is in the file as soon as written, with and without background syncs",
          arguments: [nil, 10_000])
    func writesInOrder(syncInterval: Int?) throws {
        let path = try scratchPath("out.bin")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let file = try OutputFile(path: path, syncingBehind: syncInterval != nil, syncInterval: syncInterval ?? 1)
        var expected: [UInt8] = []
        for piece in pieces(seed: 1) {
            try piece.withUnsafeBytes { try file.write($0) }
            expected += piece
            // Under the temporary name, and whatever the syncs dropped from the cache reads back.
            #expect(try Data(contentsOf: URL(fileURLWithPath: file.temporaryPath)) == Data(expected))
        }
        #expect(file.position == expected.count)
        try file.commit()
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(expected))
        #expect(!FileManager.default.fileExists(atPath: file.temporaryPath))
    }

    @Test("A file abandoned part-way resumes at an unaligned offset and ends with the same bytes")
    func resumesAtUnalignedOffset() throws {
        let path = try scratchPath("out.bin")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let all = pieces(seed: 2)
        var expected: [UInt8] = []
        var offset = 0
        do {
            let file = try OutputFile(path: path, syncingBehind: true, syncInterval: 10_000)
            for piece in all[0..<4] {
                try piece.withUnsafeBytes { try file.write($0) }
                expected += piece
            }
            offset = file.position
            // Bytes written after the position a journal would record; the resume truncates them.
            try all[4].withUnsafeBytes { try file.write(UnsafeRawBufferPointer(rebasing: $0[0..<10_000])) }
        }
        #expect(offset % 4096 != 0)
        let resumed = try OutputFile(path: path, resumingAt: offset, syncingBehind: true, syncInterval: 10_000)
        for piece in all[4...] {
            try piece.withUnsafeBytes { try resumed.write($0) }
            expected += piece
        }
        try resumed.commit()
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(expected))
    }

    @Test("A background sync that fails makes the commit fail, naming the call and the file")
    func backgroundSyncFailureSurfaces() throws {
        let path = try scratchPath("out.bin")
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        // A FIFO under the temporary name takes writes (into its buffer) but refuses fdatasync (EINVAL).
        #expect(mkfifo(path + ".partial", 0o644) == 0)
        let file = try OutputFile(path: path, syncingBehind: true, syncInterval: 100)
        try [UInt8](repeating: 7, count: 200).withUnsafeBytes { try file.write($0) }
        #expect {
            try file.commit()
        } throws: { error in
            guard let error = error as? SystemError else { return false }
            return error.call == "fdatasync" && error.path == file.temporaryPath && error.errno == EINVAL
        }
        #expect(!FileManager.default.fileExists(atPath: path), "nothing under the final name")
    }
}
