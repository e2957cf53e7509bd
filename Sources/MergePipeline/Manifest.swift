// Manifest: merge-manifest.json — what went in, what came out, every file's and tensor's hash.
import Distillation
import Foundation

/// `merge-manifest.json`, written last: its presence means the output is complete. Everything but
/// `run` is a function of the inputs, config and seed, so two runs give equal manifests apart from `run`.
public struct Manifest: Codable, Sendable {
    public struct FileRecord: Codable, Sendable, Equatable {
        public var path: String
        public var size: Int
        public var xxh3_128: String
    }

    public struct TensorRecord: Codable, Sendable, Equatable {
        public var name: String
        public var file: String
        public var dtype: String
        public var shape: [Int]
        public var xxh3_64: String
    }

    public struct LayerRecord: Codable, Sendable {
        public var layer: String
        public var tensors: Int
        /// Data-driven methods: loss before and after training, epochs and steps (timings are under `run`).
        public var distill: DistillLayerStatistics?
    }

    public struct RunFigures: Codable, Sendable {
        public var wall_seconds: Double
        public var peak_rss_bytes: Int
        public var bytes_read: Int
        public var bytes_written: Int
        public var threads: Int
        public var resumed: Bool
        /// Data-driven methods: seconds per trained layer and activation-cache figures.
        public var distill_layers: [DistillLayerTiming]?
    }

    public var format_version = 1
    public var tool: String
    public var method: String
    public var seed: UInt64
    public var config_path: String
    public var config_xxh3_128: String
    public var config: String
    public var inputs: [FileRecord]
    public var outputs: [FileRecord]
    public var tensors: [TensorRecord]
    /// End-to-end methods (SAMerging, AdaMerging): loss before and after training, steps, mean coefficients.
    public var training: EndToEndStatistics?
    public var layers: [LayerRecord]
    public var run: RunFigures

    public static let fileName = "merge-manifest.json"

    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    public static func load(directory: String) throws -> Manifest {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MergeError.verification(path: path, detail: "no manifest: the output is incomplete or not a streammerge output")
        }
        do { return try JSONDecoder().decode(Manifest.self, from: data) } catch {
            throw MergeError.verification(path: path, detail: "unreadable manifest: \(error)")
        }
    }
}

public let toolVersion = "streammerge 0.1.0"
