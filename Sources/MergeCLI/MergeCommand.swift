// MergeCommand: `streammerge merge CONFIG --out DIR`.
import ArgumentParser
import Foundation
import MergePipeline

extension StreamMerge {
    struct Merge: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Merge the models a config lists into an output directory.")

        @Argument(help: "The merge config (YAML).") var config: String
        @Option(name: .long, help: "Output directory (must be empty unless --force or --resume).") var out: String
        @Option(name: .long, help: "Scratch directory for data-driven methods.") var scratch: String?
        @Option(name: .long, help: "Worker threads (default: all cores). Output does not depend on it.") var threads: Int?
        @Option(name: .long, help: "Seed for DARE's random masks (overrides the config's seed).") var seed: UInt64?
        @Option(name: .long, help: "Largest output shard, e.g. 5GB, 500MB (overrides out_shard_size).") var shardSize: String?
        @Flag(name: .long, help: "Continue an interrupted merge in --out.") var resume = false
        @Flag(name: .long, help: "Replace the contents of a non-empty --out.") var force = false
        @Flag(name: .long, help: "Print a JSON summary on stdout.") var json = false
        @Flag(name: .long, help: "No progress output.") var quiet = false

        func validate() throws {
            if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
            if let shardSize, parseByteSize(shardSize) == nil { throw ValidationError("--shard-size '\(shardSize)' is not a size such as 5GB") }
            if resume && force { throw ValidationError("--resume and --force cannot be combined") }
        }

        func run() throws {
            // Past a file-size limit, write(2) should fail with EFBIG (reported, exit 1) rather than
            // the default SIGXFSZ killing the process without a word.
            signal(SIGXFSZ, SIG_IGN)
            let manifest = try reportingErrors { () throws -> Manifest in
                var loaded = try MergeConfig.load(path: config)
                if let seed { loaded.seed = seed }
                let plan = try MergePlan(config: loaded, shardSize: shardSize.flatMap(parseByteSize))
                var options = MergeOptions(
                    outputDirectory: out, threads: threads ?? ProcessInfo.processInfo.activeProcessorCount,
                    resume: resume, force: force)
                options.scratchDirectory = scratch
                if stderrIsTerminal && !quiet {
                    let trainingStarted = Date()
                    let blocks = plan.layers.filter { if case .block = $0.key { true } else { false } }.count
                    options.distillProgress = { block, epoch, epochs, loss in
                        // ETA from the blocks and epochs done so far at the average pace.
                        let done = Double(block) + Double(epoch) / Double(epochs)
                        let eta = Date().timeIntervalSince(trainingStarted) / max(done, 1e-9) * (Double(blocks) - done)
                        let line = String(format: "\r  block %d/%d  epoch %d/%d  loss %.6g  ETA %.0f s   ", block + 1, blocks, epoch, epochs, loss, eta)
                        FileHandle.standardError.write(Data(line.utf8))
                    }
                    options.trainingProgress = { step, steps, loss in
                        let eta = Date().timeIntervalSince(trainingStarted) / Double(step) * Double(steps - step)
                        let line = String(format: "\r  step %d/%d  loss %.6g  ETA %.0f s   ", step, steps, loss, eta)
                        FileHandle.standardError.write(Data(line.utf8))
                        if step == steps { FileHandle.standardError.write(Data("\n".utf8)) }
                    }
                    let started = Date(), expected = plan.outputBytes
                    options.progress = { done, total, written in
                        let seconds = max(Date().timeIntervalSince(started), 1e-3)
                        let rate = Double(written) / seconds
                        let eta = rate > 0 ? Double(max(expected - written, 0)) / rate : 0
                        let line = String(format: "\r  layer %d/%d  %@ written  %.2f GB/s  ETA %.0f s   ",
                                          done, total, formatBytes(written), rate / 1e9, eta)
                        FileHandle.standardError.write(Data(line.utf8))
                        if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
                    }
                }
                return try executeMerge(plan, options: options)
            }
            if json {
                try printJSON(MergeSummary(manifest: manifest, output: out))
            } else if !quiet {
                let run = manifest.run
                print("merged \(manifest.tensors.count) tensors (\(manifest.method)) into \(out): "
                      + "\(formatBytes(run.bytes_written)) in \(String(format: "%.2f", run.wall_seconds)) s, "
                      + "peak RSS \(formatBytes(run.peak_rss_bytes))")
            }
        }
    }
}

/// The `--json` summary of a merge.
struct MergeSummary: Encodable {
    var output: String
    var method: String
    var tensors: Int
    var files: [Manifest.FileRecord]
    var wall_seconds: Double
    var peak_rss_bytes: Int
    var bytes_read: Int
    var bytes_written: Int
    var resumed: Bool

    init(manifest: Manifest, output: String) {
        self.output = output
        method = manifest.method
        tensors = manifest.tensors.count
        files = manifest.outputs
        wall_seconds = manifest.run.wall_seconds
        peak_rss_bytes = manifest.run.peak_rss_bytes
        bytes_read = manifest.run.bytes_read
        bytes_written = manifest.run.bytes_written
        resumed = manifest.run.resumed
    }
}
