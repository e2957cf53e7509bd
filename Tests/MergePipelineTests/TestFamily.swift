// TestFamily: a small Llama-named base with fine-tunes, written to a temporary directory for CLI tests.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

/// A base model and `fineTunes` fine-tunes with `blocks` blocks of width `width`, plus a config per method.
struct TestFamily {
    let directory: String
    let blocks: Int
    let width: Int

    init(blocks: Int = 3, width: Int = 16, fineTunes: Int = 3, dtype: DType = .f32, extraHead: Bool = true) throws {
        directory = makeTemporaryDirectory("streammerge-family")
        self.blocks = blocks
        self.width = width
        let base = Self.tensors(blocks: blocks, width: width, seed: 1, scale: 0.05)
        try writeModelDirectory(directory + "/base", base, dtype: dtype, config: ["model_type": "llama", "num_hidden_layers": blocks])
        for model in 0..<fineTunes {
            var tuned = base.enumerated().map { number, tensor in
                (tensor.name, tensor.shape, zip(tensor.values, testValues(tensor.values.count, seed: UInt64(100 * model + number + 7), scale: 0.005)).map(+))
            }
            if extraHead && model == fineTunes - 1 { tuned.append(("score.weight", [3, width], testValues(3 * width, seed: 99))) }
            try writeModelDirectory(directory + "/ft-\(model)", tuned, dtype: dtype, config: ["model_type": "llama", "num_hidden_layers": blocks])
        }
        try "{\"model\": {\"type\": \"BPE\"}}".write(toFile: directory + "/base/tokenizer.json", atomically: true, encoding: .utf8)
    }

    static func tensors(blocks: Int, width: Int, seed: UInt64, scale: Float) -> [(name: String, shape: [Int], values: [Float])] {
        var tensors: [(name: String, shape: [Int], values: [Float])] = [("model.embed_tokens.weight", [64, width], testValues(64 * width, seed: seed, scale: scale))]
        for block in 0..<blocks {
            for (name, shape) in [("self_attn.q_proj.weight", [width, width]), ("mlp.up_proj.weight", [2 * width, width]),
                                  ("input_layernorm.weight", [width])] {
                tensors.append(("model.layers.\(block).\(name)", shape, testValues(shape.reduce(1, *), seed: seed &+ UInt64(tensors.count), scale: scale)))
            }
        }
        tensors.append(("model.norm.weight", [width], testValues(width, seed: seed &+ 1000, scale: scale)))
        tensors.append(("lm_head.weight", [64, width], testValues(64 * width, seed: seed &+ 2000, scale: scale)))
        return tensors
    }

    /// Writes a config for `method` and returns its path.
    func config(_ method: String, extra: String = "", name: String? = nil, modelCount: Int = 3) throws -> String {
        var text = "merge_method: \(method)\nbase_model: base\nmodels:\n"
        for model in 0..<modelCount {
            text += "  - model: ft-\(model)\n    parameters: {weight: \(1.0 - 0.2 * Double(model)), density: 0.5}\n"
        }
        text += "seed: 3\n" + extra
        let path = directory + "/\(name ?? method).yaml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

/// Every regular file under `directory` (relative path → bytes), skipping the manifest's run figures.
func outputFiles(_ directory: String) throws -> [String: Data] {
    var files: [String: Data] = [:]
    let enumerator = FileManager.default.enumerator(atPath: directory)!
    while let relative = enumerator.nextObject() as? String {
        var isDirectory: ObjCBool = false
        FileManager.default.fileExists(atPath: directory + "/" + relative, isDirectory: &isDirectory)
        if isDirectory.boolValue { continue }
        var data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + relative))
        if relative == "merge-manifest.json" {
            var object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
            object["run"] = nil
            data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        }
        files[relative] = data
    }
    return files
}

/// Merges `config` once uninterrupted, then again while killing it with SIGKILL at random points
/// (a fraction `window` of the first run's duration) and resuming, three kills in all; the resumed
/// output must equal the uninterrupted one byte for byte.
func expectKilledAndResumedMergeMatches(config: String, scratch: String, window: ClosedRange<Double> = 0.1...0.8) throws {
    let started = Date()
    #expect(try runStreammerge(["merge", config, "--out", scratch + "/reference"]).status == 0)
    let duration = Date().timeIntervalSince(started)
    let out = scratch + "/out"
    var generator = SystemRandomNumberGenerator()
    var kills = 0, resumedAfterKill = 0, resume = false
    for _ in 0..<20 where kills < 3 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: streammergeExecutable)
        process.arguments = ["merge", config, "--out", out, "--quiet"] + (resume ? ["--resume"] : [])
        process.standardError = FileHandle.nullDevice
        try process.run()
        usleep(UInt32(Double.random(in: window, using: &generator) * duration * 1e6))
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        if process.terminationReason == .uncaughtSignal {
            kills += 1
            resume = FileManager.default.fileExists(atPath: out + "/.streammerge/journal.json")
            if resume { resumedAfterKill += 1 } else { try? FileManager.default.removeItem(atPath: out) }
        } else {
            try? FileManager.default.removeItem(atPath: out)
            resume = false
        }
    }
    let finish = try runStreammerge(["merge", config, "--out", out] + (resume ? ["--resume"] : []))
    #expect(finish.status == 0, "\(finish.stderr)")
    #expect(kills > 0 && resumedAfterKill > 0, "kills \(kills), resumed \(resumedAfterKill)")
    #expect(try outputFiles(out) == outputFiles(scratch + "/reference"))
}
