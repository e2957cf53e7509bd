// ProDistillMergeTests: `merge_method: prodistill` end to end — parity with the PyTorch reference, determinism,
// kill -9 and resume, a corrupted cache chunk, and config errors.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

/// A copy of a distillation fixture's config with absolute paths and `extra` distill settings.
private func distillConfig(_ family: String, in directory: String, name: String = "config", epochs: Int? = nil, dtype: String? = nil) throws -> String {
    let root = fixturesDirectory + "/distill/\(family)"
    var text = try String(contentsOfFile: root + "/\(name).yaml", encoding: .utf8).replacingOccurrences(of: "./", with: root + "/")
    if let epochs { text = text.replacingOccurrences(of: "epochs: 2", with: "epochs: \(epochs)") }
    if let dtype { text = text.replacingOccurrences(of: "dtype: float32", with: "dtype: \(dtype)") }
    let path = directory + "/\(family)-\(name).yaml"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

@Suite("ProDistill merges", .serialized)
struct ProDistillMergeTests {
    @Test("per-layer losses and merged weights equal the PyTorch reference (tools/prodistill_reference.py)",
          arguments: [("bert", "config"), ("bert", "config-mean"), ("llama", "config"), ("llama", "config-mean")])
    func parity(family: String, name: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let result = try runStreammerge(["merge", try distillConfig(family, in: scratch, name: name), "--out", scratch + "/out", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let root = fixturesDirectory + "/distill/\(family)"
        let suffix = name == "config" ? "" : "-mean"
        let expected = try SafetensorsFile(path: root + "/expected\(suffix).safetensors")
        let merged = try SafetensorsFile(path: scratch + "/out/model.safetensors")
        let base = try SafetensorsFile(path: root + "/base/model.safetensors")
        for tensor in expected.tensors where tensor.dtype.isFloatingPoint {
            let ours = try merged.floats(tensor.name), reference = try expected.floats(tensor.name), start = try base.floats(tensor.name)
            // Judged against how far the merge moved the tensor from the base: a 1e-3 relative error of the change.
            let change = zip(reference, start).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            let error = zip(ours, reference).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            #expect(error <= 1e-3 * max(change, 1e-30), "\(family) \(tensor.name): \(error) vs change \(change)")
        }
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: scratch + "/out/merge-manifest.json"))) as! [String: Any]
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/expected\(suffix).json"))) as! [String: Any]
        let ours = (manifest["layers"] as! [[String: Any]]).compactMap { $0["distill"] as? [String: Any] }
        let theirs = (report["layers"] as! [[String: Any]]).filter { $0["loss_before"] != nil }
        #expect(ours.count == theirs.count && ours.count == 2)
        for (a, b) in zip(ours, theirs) {
            for key in ["loss_before", "loss_after"] {
                let x = a[key] as! Double, y = b[key] as! Double
                #expect(abs(x - y) <= 1e-3 * y, "\(family) \(key): \(x) vs \(y)")
            }
            #expect((a["loss_after"] as! Double) < (a["loss_before"] as! Double))
        }
        #expect(!FileManager.default.fileExists(atPath: scratch + "/out/.streammerge"), "scratch must be removed on success")
    }

    @Test("two runs, and --threads 1 vs 2, give byte-identical outputs (bf16 output)")
    func reproducible() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = try distillConfig("llama", in: scratch, dtype: "bfloat16")
        var outputs: [[String: Data]] = []
        for (run, threads) in [(0, "2"), (1, "2"), (2, "1")] {
            let result = try runStreammerge(["merge", config, "--out", scratch + "/out-\(run)", "--threads", threads])
            #expect(result.status == 0, "\(result.stderr)")
            outputs.append(try outputFiles(scratch + "/out-\(run)"))
        }
        #expect(outputs[0] == outputs[1] && outputs[0] == outputs[2])
        #expect(try runStreammerge(["verify", scratch + "/out-0"]).status == 0)
    }

    @Test("kill -9 during training, then --resume: byte-identical to an uninterrupted run")
    func killAndResume() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = try distillConfig("bert", in: scratch, epochs: 120)
        try expectKilledAndResumedMergeMatches(config: config, scratch: scratch)
    }

    @Test("a corrupted activation-cache chunk stops the resume with the file and chunk named (exit 1)")
    func corruptedCache() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = try distillConfig("bert", in: scratch, epochs: 100)
        let out = scratch + "/out", cache = scratch + "/cache"
        // Run until block 0 is journaled (block 1's inputs are then in the cache), then kill.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: streammergeExecutable)
        process.arguments = ["merge", config, "--out", out, "--scratch", cache, "--quiet"]
        try process.run()
        var journaled = false
        for _ in 0..<3000 where !journaled {
            usleep(20_000)
            if let data = FileManager.default.contents(atPath: out + "/.streammerge/journal.json"),
               let journal = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
               (journal["layer_statistics"] as? [String: Any])?["block 0"] != nil {
                journaled = true
            }
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(journaled && process.terminationReason == .uncaughtSignal)
        let target = cache + "/L1-t1-merged.smac"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: target))
        bytes[bytes.count - 3] ^= 0x5A
        try bytes.write(to: URL(fileURLWithPath: target))
        let result = try runStreammerge(["merge", config, "--out", out, "--scratch", cache, "--resume"])
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.stderr.contains("L1-t1-merged.smac") && result.stderr.contains("chunk"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "/merge-manifest.json"))
    }

    @Test("config errors name the key: missing calibration, unknown distill key, parameters")
    func configErrors() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = try distillConfig("bert", in: scratch)
        let text = try String(contentsOfFile: config, encoding: .utf8)
        let cases = [
            (text.replacingOccurrences(of: "    calibration: \(fixturesDirectory)/distill/bert/calib/b.jsonl\n", with: ""), "calibration"),
            (text.replacingOccurrences(of: "epochs: 2", with: "epochz: 2"), "epochz"),
            (text + "parameters: {lambda: 0.5}\n", "parameters"),
            (text.replacingOccurrences(of: "loss: sum", with: "loss: huber"), "distill.loss"),
        ]
        for (number, (variant, word)) in cases.enumerated() {
            let path = scratch + "/bad-\(number).yaml"
            try variant.write(toFile: path, atomically: true, encoding: .utf8)
            let result = try runStreammerge(["merge", path, "--out", scratch + "/out-\(number)"])
            #expect(result.status == 2 && result.stderr.contains(word) && result.stderr.contains("bad-\(number).yaml"), "\(result.stderr)")
        }
    }
}
