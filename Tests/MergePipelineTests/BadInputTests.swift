// BadInputTests: every kind of bad input gives exit 2 (1 for I/O), a message naming file and tensor, and no manifest.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

@Suite("Bad input", .serialized)
struct BadInputTests {
    /// Runs a merge expected to fail and checks status, message and that no manifest appeared.
    func expectFailure(_ family: TestFamily, config: String, status: Int32, mentions: [String], out: String? = nil,
                       shellPrefix: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let out = out ?? family.directory + "/out-\(UUID().uuidString)"
        let result = try runStreammerge(["merge", config, "--out", out], shellPrefix: shellPrefix)
        #expect(result.status == status, "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        for text in mentions { #expect(result.stderr.contains(text), "'\(text)' not in: \(result.stderr)", sourceLocation: sourceLocation) }
        #expect(!FileManager.default.fileExists(atPath: out + "/merge-manifest.json"), "a failed run must not write a manifest",
                sourceLocation: sourceLocation)
    }

    @Test("A truncated fine-tune is rejected naming the file")
    func truncatedFile() throws {
        let family = try TestFamily()
        defer { family.remove() }
        let path = family.directory + "/ft-1/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: path))
        try expectFailure(family, config: try family.config("ties"), status: 2, mentions: [path, "truncated"])
    }

    @Test("A lying header is rejected naming file and tensor", arguments: ["offsets_overlap", "size_mismatch", "unknown_dtype"])
    func lyingHeader(fixture: String) throws {
        let family = try TestFamily()
        defer { family.remove() }
        let path = family.directory + "/ft-0/model.safetensors"
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: fixturesDirectory + "/safetensors/malformed/\(fixture).safetensors", toPath: path)
        try expectFailure(family, config: try family.config("task_arithmetic"), status: 2, mentions: [path, "tensor '"])
    }

    @Test("A tensor missing from one fine-tune is named with that model")
    func missingTensor() throws {
        let family = try TestFamily()
        defer { family.remove() }
        let tensors = TestFamily.tensors(blocks: 3, width: 16, seed: 5, scale: 0.05).filter { $0.name != "model.layers.2.mlp.up_proj.weight" }
        try writeModelDirectory(family.directory + "/ft-1", tensors, config: ["model_type": "llama", "num_hidden_layers": 3])
        try expectFailure(family, config: try family.config("ties"), status: 2,
                          mentions: [family.directory + "/ft-1", "model.layers.2.mlp.up_proj.weight", "missing"])
    }

    @Test("Shape and dtype mismatches name the tensor")
    func mismatches() throws {
        let family = try TestFamily()
        defer { family.remove() }
        var tensors = TestFamily.tensors(blocks: 3, width: 16, seed: 5, scale: 0.05)
        tensors[1].shape = [8, 32]
        try writeModelDirectory(family.directory + "/ft-1", tensors, config: ["model_type": "llama", "num_hidden_layers": 3])
        try expectFailure(family, config: try family.config("ties"), status: 2, mentions: [tensors[1].name, "shape [8, 32]"])
        try writeModelDirectory(family.directory + "/ft-1", TestFamily.tensors(blocks: 3, width: 16, seed: 5, scale: 0.05), dtype: .bf16,
                                config: ["model_type": "llama", "num_hidden_layers": 3])
        try expectFailure(family, config: try family.config("ties"), status: 2, mentions: ["model.embed_tokens.weight", "dtype BF16"])
    }

    @Test("Unknown methods, keys and unsupported mergekit keys are errors naming them")
    func badConfigs() throws {
        let family = try TestFamily()
        defer { family.remove() }
        let cases: [(String, String)] = [
            ("merge_method: slerp\nbase_model: base\nmodels:\n  - model: ft-0\n", "unknown merge_method 'slerp'"),
            ("merge_method: ties\nbase_model: base\nmodels:\n  - model: ft-0\nwat: 1\n", "unknown key 'wat'"),
            ("merge_method: ties\nbase_model: base\nmodels:\n  - model: ft-0\n    parameters: {densty: 0.5}\n", "unknown parameter 'densty'"),
            ("merge_method: ties\nbase_model: base\nslices: []\nmodels:\n  - model: ft-0\n", "mergekit key 'slices' is not supported"),
            ("merge_method: ties\nbase_model: base\nmodels:\n  - model: ft-0\n    parameters:\n      weight: [{filter: mlp, value: 1}]\n",
             "conditional (filter) parameters are not supported"),
        ]
        for (number, (text, message)) in cases.enumerated() {
            let path = family.directory + "/bad\(number).yaml"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            try expectFailure(family, config: path, status: 2, mentions: [path, message])
        }
    }

    @Test("A non-empty output directory is refused without --force")
    func outputNotEmpty() throws {
        let family = try TestFamily()
        defer { family.remove() }
        let out = family.directory + "/occupied"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try "keep me".write(toFile: out + "/notes.txt", atomically: true, encoding: .utf8)
        try expectFailure(family, config: try family.config("ties"), status: 2, mentions: [out, "not empty"], out: out)
        #expect(FileManager.default.fileExists(atPath: out + "/notes.txt"))
        #expect(try runStreammerge(["merge", try family.config("ties"), "--out", out, "--force"]).status == 0)
    }

    @Test("A write failure part-way (file-size limit) exits 1 naming the file, with no manifest")
    func writeFailure() throws {
        let family = try TestFamily(blocks: 4, width: 64)
        defer { family.remove() }
        // ulimit -f counts 512-byte blocks here (dash): 40 blocks = 20 KB, well inside the first shard.
        try expectFailure(family, config: try family.config("task_arithmetic"), status: 1,
                          mentions: ["model.safetensors.partial", "File too large"], shellPrefix: "ulimit -f 40")
    }
}
