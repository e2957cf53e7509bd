// ArchitectureConfigTests: config.json reading — RoPE settings in both spellings, and errors naming the field.
import Foundation
import ModelArchitectures
import Testing
import TestSupport

@Suite("Architecture config")
struct ArchitectureConfigTests {
    func load(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/\(name)/config.json"))) as! [String: Any]
    }

    @Test("transformers 5's rope_parameters and the classic rope_theta + rope_scaling read the same")
    func ropeParameters() throws {
        var classic = try load("llama3-tiny")
        let expected = try ArchitectureConfig(classic, path: "classic")
        guard case .llama3 = expected.ropeScaling else { Issue.record("llama3 scaling not read"); return }
        var parameters = classic["rope_scaling"] as! [String: Any]
        parameters["rope_theta"] = classic["rope_theta"]
        classic["rope_scaling"] = nil
        classic["rope_theta"] = nil
        classic["rope_parameters"] = parameters
        let modern = try ArchitectureConfig(classic, path: "modern")
        #expect(modern.ropeScaling == expected.ropeScaling && modern.ropeTheta == expected.ropeTheta)
        #expect(expected.headDim == 32, "head_dim comes from config.json, not hidden/heads")
    }

    @Test("missing fields and unsupported values are errors naming the file and field")
    func errors() throws {
        var config = try load("llama-tiny")
        config["hidden_size"] = nil
        #expect(throws: ArchitectureError.invalidConfig(path: "c.json", detail: "missing or non-integer 'hidden_size'")) {
            try ArchitectureConfig(config, path: "c.json")
        }
        config = try load("bert-tiny")
        config["hidden_act"] = "relu"
        #expect(throws: ArchitectureError.self) { try ArchitectureConfig(config, path: "c.json") }
        config["model_type"] = "t5"
        do {
            _ = try ArchitectureConfig(config, path: "c.json")
            Issue.record("t5 accepted")
        } catch {
            #expect(error.description == "c.json: model_type 't5' is not supported; supported: bert, llama, mistral, qwen2, roberta")
        }
    }
}
