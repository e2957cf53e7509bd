// ForwardCommandTests: `streammerge forward` end to end on the golden fixture models, and its errors on bad input.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

/// Writes the golden fixture's examples as calibration JSONL (ids, mask and token types per example).
private func writeGoldenJSONL(_ model: String, to path: String) throws {
    let golden = try SafetensorsFile(path: fixturesDirectory + "/models/\(model)/golden.safetensors")
    let shape = golden.info("input_ids")!.shape
    let (B, S) = (shape[0], shape[1])
    let ids = try golden.floats("input_ids"), mask = try golden.floats("attention_mask")
    let types = golden.info("token_type_ids") != nil ? try golden.floats("token_type_ids") : nil
    var lines: [String] = []
    for b in 0..<B {
        func list(_ values: [Float]) -> String { "[" + values[b * S..<(b + 1) * S].map { String(Int($0)) }.joined(separator: ",") + "]" }
        var line = "{\"input_ids\": \(list(ids)), \"attention_mask\": \(list(mask))"
        if let types { line += ", \"token_type_ids\": \(list(types))" }
        lines.append(line + "}")
    }
    try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
}

private func maxScaledDifference(_ a: [Float], _ b: [Float]) -> Float {
    let scale = b.reduce(0) { max($0, abs($1)) }
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } / scale
}

@Suite("streammerge forward")
struct ForwardCommandTests {
    @Test("writes every hidden state, the pooler output and logits as transformers computes them",
          arguments: [("bert-tiny", "classifier"), ("llama-tiny", "lm_head"), ("qwen2-tiny", nil), ("roberta-tiny", nil)])
    func goldenOutputs(model: String, head: String?) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try writeGoldenJSONL(model, to: scratch + "/input.jsonl")
        var arguments = ["forward", fixturesDirectory + "/models/\(model)", "--input", scratch + "/input.jsonl",
                         "--out", scratch + "/out.safetensors", "--layers", "--batch-size", "2", "--json"]
        if let head {
            // A head file as a merge writes it: the model's own head tensors under their names.
            let weights = try SafetensorsFile(path: fixturesDirectory + "/models/\(model)/model.safetensors")
            let tensors = try weights.tensors.filter { $0.name.hasPrefix(head + ".") }.map { ($0.name, $0.shape, try weights.floats($0.name)) }
            try writeSafetensors(scratch + "/head.safetensors", tensors)
            arguments += ["--head", scratch + "/head.safetensors"]
        }
        let result = try runStreammerge(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        let out = try SafetensorsFile(path: scratch + "/out.safetensors")
        let golden = try SafetensorsFile(path: fixturesDirectory + "/models/\(model)/golden.safetensors")
        var compared: [String] = []
        for tensor in out.tensors {
            let reference = try golden.floats(tensor.name)
            #expect(tensor.shape == golden.info(tensor.name)!.shape, "\(tensor.name)")
            #expect(maxScaledDifference(try out.floats(tensor.name), reference) < 1e-5, "\(model) \(tensor.name)")
            compared.append(tensor.name)
        }
        #expect(compared.contains("hidden_state_0") && compared.contains("hidden_state_2") && compared.contains("last_hidden_state"))
        #expect(compared.contains("logits") == (head != nil))
    }

    @Test("bad input exits 2 naming the file: unsupported model_type, token outside the vocabulary, missing tensor")
    func badInput() throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let model = scratch + "/model"
        try FileManager.default.copyItem(atPath: fixturesDirectory + "/models/bert-tiny", toPath: model)
        try writeGoldenJSONL("bert-tiny", to: scratch + "/input.jsonl")
        func forward(_ input: String = scratch + "/input.jsonl") throws -> CommandResult {
            try runStreammerge(["forward", model, "--input", input, "--out", scratch + "/out.safetensors"])
        }

        try #"{"input_ids": [1, 2, 500]}"#.write(toFile: scratch + "/big.jsonl", atomically: true, encoding: .utf8)
        var result = try forward(scratch + "/big.jsonl")
        #expect(result.status == 2 && result.stderr.contains("big.jsonl") && result.stderr.contains("500"), "\(result.stderr)")

        try #"{"input_ids": [1, 2], "labels": [0]}"#.write(toFile: scratch + "/key.jsonl", atomically: true, encoding: .utf8)
        result = try forward(scratch + "/key.jsonl")
        #expect(result.status == 2 && result.stderr.contains("key.jsonl:1") && result.stderr.contains("labels"), "\(result.stderr)")

        // Drop one block tensor from the weights.
        let weights = try SafetensorsFile(path: model + "/model.safetensors")
        let kept = try weights.tensors.filter { $0.name != "bert.encoder.layer.1.output.dense.bias" }.map { ($0.name, $0.shape, try weights.floats($0.name)) }
        try writeSafetensors(model + "/model.safetensors", kept)
        result = try forward()
        #expect(result.status == 2 && result.stderr.contains("model") && result.stderr.contains("output.dense.bias"), "\(result.stderr)")

        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: model + "/config.json"))) as! [String: Any]
        config["model_type"] = "gpt2"
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: model + "/config.json"))
        result = try forward()
        #expect(result.status == 2 && result.stderr.contains("gpt2") && result.stderr.contains("bert, llama, mistral, qwen2, roberta"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: scratch + "/out.safetensors"), "no output may look complete after an error")
    }
}
