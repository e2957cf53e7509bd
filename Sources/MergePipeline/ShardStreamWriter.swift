// ShardStreamWriter: streams planned shards to disk — header first, data in plan order — hashing every byte.
import Checksum
import FileIO
import Foundation

/// Writes one shard at a time under a temporary name, hashing the file as it goes.
final class ShardStreamWriter {
    let plan: MergePlan
    let directory: String
    private(set) var shardIndex = -1
    private var file: OutputFile?
    private var hasher = XXH3Hasher(.bits128)
    private(set) var totalWritten = 0

    init(plan: MergePlan, directory: String) {
        self.plan = plan
        self.directory = directory
    }

    var position: Int { file?.position ?? 0 }

    /// Starts shard `index`, writing its header; or, resuming, reopens its partial file at `resumingAt`
    /// and re-hashes the prefix, refusing bytes that no longer match the journal's hash.
    func open(shard index: Int, resumingAt offset: Int?, expectedPrefixHash: String) throws {
        let path = directory + "/" + plan.shards[index].fileName
        shardIndex = index
        hasher = XXH3Hasher(.bits128)
        guard let offset else {
            file = try OutputFile(path: path, syncingBehind: true)
            try plan.shards[index].layout.headerBytes.withUnsafeBytes { try write($0) }
            return
        }
        // A crash between a shard's rename and the next journal leaves it under its final name.
        if !FileManager.default.fileExists(atPath: path + ".partial"), FileManager.default.fileExists(atPath: path) {
            try FileManager.default.moveItem(atPath: path, toPath: path + ".partial")
        }
        var remaining = offset
        try FileReader.forEachPiece(of: path + ".partial") { piece in
            let used = min(remaining, piece.count)
            hasher.update(UnsafeRawBufferPointer(rebasing: piece[0..<used]))
            remaining -= used
        }
        guard remaining == 0, hasher.hexDigest() == expectedPrefixHash else {
            throw MergeError.resume(path: path + ".partial", detail: "the partial shard does not match the journal")
        }
        file = try OutputFile(path: path, resumingAt: offset, syncingBehind: true)
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try file!.write(bytes)
        hasher.update(bytes)
        totalWritten += bytes.count
    }

    func prefixHash() -> String { hasher.hexDigest() }

    /// Completes the current shard: fsync, rename, and its manifest record.
    func commit() throws -> Manifest.FileRecord {
        let shard = plan.shards[shardIndex]
        guard let file, file.position == shard.layout.fileSize else {
            throw MergeError.io(path: directory + "/" + shard.fileName, detail: "wrote \(position) bytes, expected \(shard.layout.fileSize)")
        }
        try file.commit()
        self.file = nil
        return Manifest.FileRecord(path: shard.fileName, size: shard.layout.fileSize, xxh3_128: hasher.hexDigest())
    }
}
