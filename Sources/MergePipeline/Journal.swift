// Journal: progress of an unfinished merge, replaced atomically after every layer, for `--resume`.
import Distillation
import FileIO
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
        try writeFileAtomically(Self.path(in: directory), Array(try encoder.encode(self)))
    }

    static func load(in directory: String) throws -> Journal? {
        guard let data = FileManager.default.contents(atPath: path(in: directory)) else { return nil }
        do { return try JSONDecoder().decode(Journal.self, from: data) } catch {
            throw MergeError.resume(path: path(in: directory), detail: "unreadable journal: \(error)")
        }
    }
}
