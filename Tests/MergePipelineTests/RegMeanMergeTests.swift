// RegMeanMergeTests: `merge_method: regmean` — the PyTorch/numpy reference solve, the one-model identity, determinism.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

/// A RegMean config over a distillation fixture family, with absolute paths.
private func regmeanConfig(_ family: String, in directory: String, models: [String] = ["a", "b", "c"]) throws -> String {
    let root = fixturesDirectory + "/distill/\(family)"
    var text = "merge_method: regmean\nbase_model: \(root)/base\nmodels:\n"
    for model in models { text += "  - model: \(root)/ft-\(model)\n    calibration: \(root)/calib/\(model).jsonl\n" }
    text += "dtype: float32\ndistill: {batch_size: 4, max_length: 8, alpha: 0.9}\n"
    let path = directory + "/\(family)-regmean-\(models.joined()).yaml"
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// max |a − b| / max |b| over one tensor.
private func scaledDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) } / max(b.reduce(0) { max($0, abs($1)) }, 1e-30)
}

@Suite("RegMean merges", .serialized)
struct RegMeanMergeTests {
    @Test("equals the float64 reference solve (tools/regmean_reference.py) within 1e-5", arguments: ["bert", "llama"])
    func reference(family: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let result = try runStreammerge(["merge", try regmeanConfig(family, in: scratch), "--out", scratch + "/out"])
        #expect(result.status == 0, "\(result.stderr)")
        let ours = try SafetensorsFile(path: scratch + "/out/model.safetensors")
        let expected = try SafetensorsFile(path: fixturesDirectory + "/distill/\(family)/expected-regmean.safetensors")
        var linear = 0
        for tensor in expected.tensors where tensor.dtype.isFloatingPoint {
            let error = scaledDifference(try ours.floats(tensor.name), try expected.floats(tensor.name))
            #expect(error <= 1e-5, "\(family) \(tensor.name): \(error)")
            if tensor.shape.count == 2 && tensor.name.contains("layer") { linear += 1 }
        }
        #expect(linear >= 8)
        #expect(try runStreammerge(["verify", scratch + "/out"]).status == 0)
    }

    @Test("RegMean of one model is that model", arguments: ["bert", "llama"])
    func oneModel(family: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let result = try runStreammerge(["merge", try regmeanConfig(family, in: scratch, models: ["a"]), "--out", scratch + "/out"])
        #expect(result.status == 0, "\(result.stderr)")
        let ours = try SafetensorsFile(path: scratch + "/out/model.safetensors")
        let model = try SafetensorsFile(path: fixturesDirectory + "/distill/\(family)/ft-a/model.safetensors")
        for tensor in ours.tensors where tensor.dtype.isFloatingPoint {
            // The fine-tune stores the same tensor, possibly under a prefixed name.
            let name = model.info(tensor.name) != nil ? tensor.name : model.tensors.first { $0.name.hasSuffix("." + tensor.name) }!.name
            let error = scaledDifference(try ours.floats(tensor.name), try model.floats(name))
            #expect(error <= 1e-5, "\(family) \(tensor.name): \(error)")
        }
    }
}
