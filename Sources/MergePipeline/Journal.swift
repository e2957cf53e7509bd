// Journal: progress of an unfinished merge, replaced atomically after every layer, for `--resume`.
import Distillation
import FileIO
import Dispatch
import Foundation

/// `DIR/.streammerge/journal.json`. Records enough to continue a killed run and still end with
/// byte-identical outputs: the config hash and input identities (path, size, mtime) it was started with, how many plan tensors
/// are written, the byte position in the current shard, and the hashes of everything finished.
/// The partial shard's running hash is not stored: on resume its prefix is re-read and re-hashed,
/// which also proves the bytes on disk are the ones the journal describes.
struct Journal: Codable {
    /// An input as the journal knows it. Hashing every input again before resuming would cost a full
    /// read; a replaced or rewritten file changes its size or modification time.
    struct InputIdentity: Codable, Equatable {
        var path: String
        var size: Int
        var modified: Double
    }

    var config_xxh3_128: String
    var inputs: [InputIdentity]
    var tensors_done: Int
    var shard: Int
    var shard_position: Int
    var shard_prefix_xxh3_128: String
    var finished_shards: [Manifest.FileRecord]
    var tensor_hashes: [Manifest.TensorRecord]
    /// Data-driven methods: statistics of the layers already trained.
    var layer_statistics: [String: DistillLayerStatistics]?
    var layer_timings: [DistillLayerTiming]?

    static func path(in directory: String) -> String { directory + "/.streammerge/journal.json" }

    func save(in directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Replaced atomically but not fsynced: a killed process leaves every write in the page cache,
        // and after a power loss an older journal is still a consistent state — the resume re-hashes
        // the shard's prefix against it and refuses rather than trust bytes that never reached the
        // disk. An fsync here cost ~25 ms per layer: ext4 commits the shard's pending blocks with it.
        try writeFileAtomically(Self.path(in: directory), Array(try encoder.encode(self)), durable: false)
    }

    static func load(in directory: String) throws -> Journal? {
        guard let data = FileManager.default.contents(atPath: path(in: directory)) else { return nil }
        do { return try JSONDecoder().decode(Journal.self, from: data) } catch {
            throw MergeError.resume(path: path(in: directory), detail: "unreadable journal: \(error)")
        }
    }
}

/// Saves journals in order on a background queue, so the merge does not wait for the file system
/// between layers. A crash loses at most the snapshots still queued: the resume then starts from an
/// earlier consistent state and redoes a layer. The first failure is kept and rethrown.
final class JournalWriter: @unchecked Sendable {
    private let directory: String
    private let queue = DispatchQueue(label: "streammerge.journal")
    private let lock = NSLock()
    private var failure: Error?

    init(directory: String) { self.directory = directory }

    /// Queues `journal` to replace the saved one; throws an earlier save's error.
    func save(_ journal: Journal) throws {
        try rethrow()
        queue.async { [self] in
            guard lock.withLock({ failure == nil }) else { return }
            do { try journal.save(in: directory) } catch { lock.withLock { failure = error } }
        }
    }

    /// Waits for every queued save; throws the first error.
    func finish() throws {
        queue.sync {}
        try rethrow()
    }

    private func rethrow() throws {
        if let error = lock.withLock({ failure }) { throw error }
    }
}
