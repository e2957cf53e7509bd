// PlanCommand: `streammerge plan CONFIG` — layers, tensors, bytes and memory, from headers alone.
import ArgumentParser
import Foundation
import MergePipeline

extension StreamMerge {
    struct Plan: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show what a merge would do, reading headers only.")

        @Argument(help: "The merge config (YAML).") var config: String
        @Option(name: .long, help: "Worker threads the estimate assumes (default: all cores).") var threads: Int?
        @Flag(name: .long, help: "Print JSON.") var json = false

        struct Summary: Encodable {
            struct Layer: Encodable { var layer: String; var tensors: Int; var bytes: Int; var training_bytes: Int? }
            struct Shard: Encodable { var file: String; var tensors: Int; var bytes: Int }
            var method: String
            var models: Int
            var tensors: Int
            var input_bytes: Int
            var output_bytes: Int
            var threads: Int
            var estimated_peak_rss_bytes: Int
            var layers: [Layer]
            var shards: [Shard]
            var heads: [String]
        }

        func run() throws {
            let summary = try reportingErrors { () throws -> Summary in
                let plan = try MergePlan(config: try MergeConfig.load(path: config))
                let workers = threads ?? ProcessInfo.processInfo.activeProcessorCount
                return Summary(
                    method: plan.config.methodName, models: plan.models.count, tensors: plan.tensors.count,
                    input_bytes: plan.inputBytes, output_bytes: plan.outputBytes, threads: workers,
                    estimated_peak_rss_bytes: plan.estimatedPeakBytes(threads: workers),
                    layers: plan.layers.map { layer in
                        .init(layer: layer.key.description, tensors: layer.tensors.count,
                              bytes: plan.tensors[layer.tensors].reduce(0) { $0 + $1.outputSpec.byteCount },
                              training_bytes: plan.distillLayerBytes(layer.key, threads: workers))
                    },
                    shards: plan.shards.map { .init(file: $0.fileName, tensors: $0.tensors.count, bytes: $0.layout.fileSize) },
                    heads: plan.heads.map(\.fileName))
            }
            if json { return try printJSON(summary) }
            print("method \(summary.method): \(summary.models) models, \(summary.tensors) tensors, \(summary.layers.count) layers")
            print("input \(formatBytes(summary.input_bytes)), output \(formatBytes(summary.output_bytes)) in \(summary.shards.count) shard(s)")
            print("estimated peak memory with \(summary.threads) threads: \(formatBytes(summary.estimated_peak_rss_bytes))")
            for layer in summary.layers {
                let training = layer.training_bytes.map { ", training working set \(formatBytes($0))" } ?? ""
                print("  \(layer.layer): \(layer.tensors) tensors, \(formatBytes(layer.bytes))\(training)")
            }
            for shard in summary.shards { print("  \(shard.file): \(shard.tensors) tensors, \(formatBytes(shard.bytes))") }
            for head in summary.heads { print("  \(head)") }
        }
    }
}
