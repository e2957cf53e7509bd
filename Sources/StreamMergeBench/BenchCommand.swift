// BenchCommand: `streammerge-bench` — timings for tools/ benchmarks (a block forward+backward next to plain sgemm; one ProDistill block).
import ArgumentParser
import Dispatch
import Distillation
import Foundation
import MergePipeline
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

@main
struct StreamMergeBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "streammerge-bench", abstract: "Timings for the benchmarks in tools/ (prints JSON lines).",
        subcommands: [Block.self, Distill.self])

    static func main() {
        relaunchWithNativeBLASKernelsIfNeeded()
        keepFreedTensorMemoryForReuse()
        main(nil)
    }
}

/// Median wall seconds of `repeat` runs of `body` after `warmup` unmeasured ones.
func medianSeconds(warmup: Int, repeat count: Int, _ body: () throws -> Void) rethrows -> Double {
    for _ in 0..<warmup { try body() }
    var times: [Double] = []
    for _ in 0..<count {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    return times.sorted()[times.count / 2]
}

func printJSONLine(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

extension StreamMergeBench {
    /// One BERT encoder block (random weights), forward and backward, and sgemm on the block's largest
    /// product shape, in the same process.
    struct Block: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Time one BERT block forward+backward and plain sgemm.")
        @Option var hidden = 1024
        @Option var heads = 16
        @Option var intermediate = 4096
        @Option var batch = 16
        @Option var tokens = 128
        @Option var threads = 2
        @Option var warmup = 2
        @Option var `repeat` = 5

        func run() throws {
            setKernelThreads(threads)
            let (H, I, N) = (hidden, intermediate, batch * tokens)
            var config = try ArchitectureConfig(
                ["model_type": "bert", "hidden_size": H, "num_hidden_layers": 1, "num_attention_heads": heads,
                 "intermediate_size": I, "vocab_size": 8, "hidden_act": "gelu"], path: "benchmark")
            config.normEps = 1e-12
            var tensors: [String: Tensor] = [:]
            var seed: UInt64 = 1
            func random(_ shape: [Int], scale: Float) -> Tensor {
                let t = Tensor(shape: shape)
                for i in 0..<t.count {
                    seed = seed &* 6364136223846793005 &+ 1442695040888963407
                    t.data[i] = (Float(seed >> 40) / Float(1 << 24) - 0.5) * 2 * scale
                }
                return t
            }
            for name in ["query", "key", "value"] {
                tensors["attention.self.\(name).weight"] = random([H, H], scale: 0.03)
                tensors["attention.self.\(name).bias"] = random([H], scale: 0.01)
            }
            tensors["attention.output.dense.weight"] = random([H, H], scale: 0.03)
            tensors["attention.output.dense.bias"] = random([H], scale: 0.01)
            tensors["intermediate.dense.weight"] = random([I, H], scale: 0.03)
            tensors["intermediate.dense.bias"] = random([I], scale: 0.01)
            tensors["output.dense.weight"] = random([H, I], scale: 0.03)
            tensors["output.dense.bias"] = random([H], scale: 0.01)
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                tensors[name + ".weight"] = Tensor(shape: [H], values: [Float](repeating: 1, count: H))
                tensors[name + ".bias"] = Tensor(shape: [H])
            }
            let weights = LayerWeights(tensors: tensors, origin: "benchmark")
            let block = try Architecture(config: config).block(weights)
            let gradients = weights.zerosLike()
            let input = random([N, H], scale: 1), probe = random([N, H], scale: 1)
            let context = BlockContext(B: batch, S: tokens, attentionMask: [Int32](repeating: 1, count: N), rope: nil)
            let blockSeconds = medianSeconds(warmup: warmup, repeat: `repeat`) {
                let tape = block.forward(input, context: context)
                _ = block.backward(tape, dout: probe, gradients: gradients, context: context)
            }
            let forwardFlops = 2.0 * Double(N) * Double(4 * H * H + 2 * H * I) + 4.0 * Double(batch * tokens * tokens * H)
            let flops = 3 * forwardFlops
            // Plain sgemm on the block's largest product: [N, H] × [H, I].
            let a = random([N, H], scale: 1), b = random([I, H], scale: 1), c = Tensor(shape: [N, I])
            let sgemmSeconds = medianSeconds(warmup: warmup, repeat: `repeat`) {
                sgemm(c.data, a.data, b.data, M: N, N: I, K: H, transposeB: true)
            }
            let sgemmGflops = 2.0 * Double(N) * Double(I) * Double(H) / sgemmSeconds / 1e9
            printJSONLine([
                "bench": "block", "block_ms": blockSeconds * 1e3, "gflops": flops / blockSeconds / 1e9, "flops": flops,
                "sgemm_gflops": sgemmGflops, "ratio_to_sgemm": flops / blockSeconds / 1e9 / sgemmGflops, "threads": threads,
            ])
        }
    }

    /// Trains block 0 of a prodistill config (after computing its inputs) and reports ms per step of
    /// the training loop (as the PyTorch reference times its own) and the activation cache's cost and
    /// compression.
    struct Distill: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Time ProDistill's training of block 0 for a config.")
        @Argument var config: String
        @Option var threads = 2
        @Option(help: "Override the config's epochs (per-step cost does not depend on it).") var epochs: Int?

        func run() throws {
            setKernelThreads(threads)
            var loaded = try MergeConfig.load(path: config)
            guard var settings = loaded.distill else { throw ValidationError("\(config) is not a prodistill config") }
            if let epochs { settings.epochs = epochs }
            loaded.distill = settings
            let plan = try MergePlan(config: loaded)
            let base = plan.base!
            let scratch = NSTemporaryDirectory() + "streammerge-bench-\(UUID().uuidString)"
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let paths = loaded.models.map { $0.calibration! }
            let distill = try ProDistill(
                settings: settings, architecture: try Architecture(source: base), base: LayerReader(source: base),
                fineTunes: plan.models.map { LayerReader(source: $0) }, calibration: try paths.map { try TokenizedExample.readJSONL($0) },
                calibrationPaths: paths, scratch: scratch, outputDType: .f32, threads: threads, seed: loaded.seed)
            try distill.prepareEmbeddings()
            let (_, statistics, timing) = try distill.trainBlock(0)
            printJSONLine([
                "bench": "prodistill", "impl": "streammerge", "config": config, "layer": 0, "steps": statistics.steps,
                "seconds": timing.seconds, "training_seconds": timing.training_seconds!,
                "ms_per_step": timing.training_seconds! / Double(statistics.steps) * 1e3,
                "cache_seconds": timing.cache_seconds, "cache_fraction": timing.cache_seconds / timing.seconds,
                "compression_ratio": Double(timing.cache_raw_bytes) / Double(max(timing.cache_stored_bytes, 1)),
                "loss_before": statistics.loss_before, "loss_after": statistics.loss_after, "threads": threads,
                "peak_rss_bytes": peakRSS(),
            ])
        }
    }
}

func peakRSS() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}
