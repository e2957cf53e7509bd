// EndToEndMergeTests: `merge_method: samerging | adamerging` through the CLI — training lowers the loss, outputs verify,
// determinism across runs and threads (RegMean's too), kill -9 and resume, and config errors.
import Foundation
import Testing
import TestSupport

/// The distillation fixture's config turned into an end-to-end one with absolute paths.
private func endToEndConfig(_ family: String, method: String, in directory: String, distill: String = "{steps: 6, batch_size: 4, max_length: 8}",
                            dtype: String = "float32") throws -> String {
    let root = fixturesDirectory + "/distill/\(family)"
    let text = try String(contentsOfFile: root + "/config.yaml", encoding: .utf8)
        .replacingOccurrences(of: "./", with: root + "/")
        .replacingOccurrences(of: "merge_method: prodistill", with: "merge_method: \(method)")
        .replacingOccurrences(of: "dtype: float32", with: "dtype: \(dtype)")
        .split(separator: "\n").map { $0.hasPrefix("distill:") ? "distill: \(distill)" : String($0) }.joined(separator: "\n") + "\n"
    let path = directory + "/\(family)-\(method).yaml"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

private func manifest(_ directory: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/merge-manifest.json"))) as! [String: Any]
}

@Suite("SAMerging and AdaMerging merges", .serialized)
struct EndToEndMergeTests {
    @Test("training lowers the objective; the output verifies, keeps the task heads and leaves no scratch",
          arguments: [("bert", "samerging"), ("bert", "adamerging"), ("llama", "samerging"), ("llama", "adamerging")])
    func merge(family: String, method: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let out = scratch + "/out"
        let result = try runStreammerge(["merge", try endToEndConfig(family, method: method, in: scratch, distill: "{steps: 20, batch_size: 4, max_length: 8, lr: 0.01}"), "--out", out])
        #expect(result.status == 0, "\(result.stderr)")
        let training = try manifest(out)["training"] as! [String: Any]
        #expect((training["loss_after"] as! Double) < (training["loss_before"] as! Double), "\(training)")
        #expect(training["steps"] as! Int == 20)
        #expect((training["lambda_mean"] as! [Double]).count == 3)
        #expect(try runStreammerge(["verify", out]).status == 0)
        #expect(FileManager.default.fileExists(atPath: out + "/heads/ft-a.safetensors") == (family == "bert"))
        #expect(!FileManager.default.fileExists(atPath: out + "/.streammerge"))
    }

    @Test("two runs, and --threads 1 vs 2, give byte-identical outputs (bf16)",
          arguments: [("bert", "samerging"), ("llama", "adamerging"), ("bert", "regmean")])
    func reproducible(family: String, method: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let distill = method == "regmean" ? "{batch_size: 4, max_length: 8}" : "{steps: 6, batch_size: 4, max_length: 8}"
        let config = try endToEndConfig(family, method: method, in: scratch, distill: distill, dtype: "bfloat16")
        var outputs: [[String: Data]] = []
        for (run, threads) in [(0, "2"), (1, "2"), (2, "1")] {
            let result = try runStreammerge(["merge", config, "--out", scratch + "/out-\(run)", "--threads", threads])
            #expect(result.status == 0, "\(result.stderr)")
            outputs.append(try outputFiles(scratch + "/out-\(run)"))
        }
        #expect(outputs[0] == outputs[1] && outputs[0] == outputs[2])
    }

    @Test("kill -9 during training, then --resume: byte-identical to an uninterrupted run")
    func killAndResume() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = try endToEndConfig("llama", method: "samerging", in: scratch, distill: "{steps: 150, batch_size: 4, max_length: 8}")
        try expectKilledAndResumedMergeMatches(config: config, scratch: scratch, window: 0.2...0.7)
    }

    @Test("config errors name the key: a ProDistill key, a bad pooling, an encoder fine-tune without a head")
    func configErrors() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let config = try endToEndConfig("bert", method: "samerging", in: scratch)
        let text = try String(contentsOfFile: config, encoding: .utf8)
        let cases = [
            (text.replacingOccurrences(of: "steps: 6", with: "epochs: 6"), "epochs"),
            (text.replacingOccurrences(of: "steps: 6", with: "steps: 6, head_pooling: max"), "head_pooling"),
            (text.replacingOccurrences(of: "merge_method: samerging", with: "merge_method: adamerging")
                .replacingOccurrences(of: "steps: 6", with: "steps: 6, rho: 0.1"), "rho"),
            // The base has no classifier: as a fine-tune it brings no head of its own.
            (text.replacingOccurrences(of: "model: \(fixturesDirectory)/distill/bert/ft-c", with: "model: \(fixturesDirectory)/distill/bert/base"), "head"),
        ]
        for (number, (variant, word)) in cases.enumerated() {
            let path = scratch + "/bad-\(number).yaml"
            try variant.write(toFile: path, atomically: true, encoding: .utf8)
            let result = try runStreammerge(["merge", path, "--out", scratch + "/out-\(number)"])
            #expect(result.status == 2 && result.stderr.contains(word) && result.stderr.contains("bad-\(number).yaml"), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: scratch + "/out-\(number)/merge-manifest.json"))
        }
    }
}
