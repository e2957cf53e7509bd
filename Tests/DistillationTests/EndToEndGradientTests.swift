// EndToEndGradientTests: streamed end-to-end ∂L/∂λ (SAMerging, AdaMerging) and one SAM + Adam step against the
// PyTorch autograd reference (tools/endtoend_reference.py → Fixtures/endtoend), and finite differences.
import Foundation
import Distillation
import ModelArchitectures
import SafetensorsFormat
import Testing
import TestSupport

/// A fixture family's merge set up as the reference sets it up: batches of 4 of at most 8 tokens, one
/// batch per task (a → 0, b → 1, c → 2), BERT heads = the fine-tunes' classifiers.
private struct Family {
    let merge: EndToEndMerge
    let items: [TaskBatch]
    let reference: [String: Any]

    init(_ family: String, method: EndToEndMerge.Method, pooling: HeadPooling? = nil, scratch: String) throws {
        let root = fixturesDirectory + "/distill/\(family)"
        reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/endtoend/\(family).json"))) as! [String: Any]
        let base = try ModelSource(path: root + "/base")
        let tunes = try ["a", "b", "c"].map { try ModelSource(path: root + "/ft-\($0)") }
        let architecture = try Architecture(source: base)
        let heads = family == "bert"
            ? try tunes.map { try LinearHead(source: $0, names: ["classifier.weight", "classifier.bias"], hidden: architecture.config.hidden) }
            : nil
        var settings = DistillSettings()
        settings.batchSize = 4
        settings.maxLength = 8
        settings.learningRate = 1e-3
        settings.headPooling = pooling
        let paths = ["a", "b", "c"].map { root + "/calib/\($0).jsonl" }
        let merge = try EndToEndMerge(
            method: method, settings: settings, architecture: architecture, base: LayerReader(source: base),
            fineTunes: tunes.map { LayerReader(source: $0) }, heads: heads, calibration: try paths.map { try TokenizedExample.readJSONL($0) },
            calibrationPaths: paths, scratch: scratch, threads: 2, seed: 0)
        self.merge = merge
        items = try (0..<3).map { try merge.item(task: $0, batch: $0) }
    }

    /// A [task][k] matrix of the reference flattened as the coefficients are laid out.
    func matrix(_ value: Any?) -> [Double] { (value as! [[Double]]).flatMap { $0 } }
    var lambda: [Double] { matrix(reference["lambda"]) }
}

/// Largest |ours − reference| relative to the reference's largest magnitude.
private func relativeError(_ ours: [Double], _ reference: [Double]) -> Double {
    let scale = reference.map(abs).max() ?? 0
    return zip(ours, reference).map { abs($0 - $1) }.max()! / max(scale, 1e-300)
}

@Suite("End-to-end gradients")
struct EndToEndGradientTests {
    @Test("coefficients are ordered by stored tensor name, as the reference orders them", arguments: ["bert", "llama"])
    func layout(family: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let f = try Family(family, method: .samerging, scratch: scratch)
        #expect(f.merge.coefficients.keys.map(\.stored) == f.reference["tensors"] as! [String])
    }

    @Test("loss and ∂L/∂λ match PyTorch autograd within 1e-4 relative",
          arguments: [("bert", "samerging", nil), ("bert", "adamerging", nil), ("bert", "samerging", "cls"), ("bert", "samerging", "mean"),
                      ("llama", "samerging", nil), ("llama", "adamerging", nil)] as [(String, String, String?)])
    func gradient(family: String, method: String, pooling: String?) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let f = try Family(family, method: EndToEndMerge.Method(rawValue: method)!, pooling: pooling.flatMap(HeadPooling.init), scratch: scratch)
        let expected = pooling == nil ? f.reference[method] as! [String: Any] : (f.reference["pooling"] as! [String: Any])[pooling!] as! [String: Any]
        let (loss, gradient) = try f.merge.lossAndGradient(f.items, values: f.lambda)
        let referenceLoss = expected["loss"] as! Double
        #expect(abs(loss - referenceLoss) <= 1e-5 * abs(referenceLoss), "\(family) \(method): loss \(loss) vs \(referenceLoss)")
        let error = relativeError(gradient, f.matrix(expected["gradient"]))
        #expect(error <= 1e-4, "\(family) \(method) \(pooling ?? ""): gradient error \(error)")
        #expect((try FileManager.default.contentsOfDirectory(atPath: scratch)).isEmpty, "saved layer inputs are removed after the backward pass")
    }

    @Test("∂L/∂λ matches central finite differences of the streamed loss", arguments: ["bert", "llama"])
    func finiteDifferences(family: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let f = try Family(family, method: .samerging, scratch: scratch)
        let (_, gradient) = try f.merge.lossAndGradient(f.items, values: f.lambda)
        // The coefficients with the largest gradients, one from each task, and a block tensor's.
        let K = f.merge.coefficients.count
        var chosen = (0..<3).map { t in (t * K)..<((t + 1) * K) }.map { range in range.max { abs(gradient[$0]) < abs(gradient[$1]) }! }
        chosen.append(f.merge.coefficients.keys.firstIndex { if case .block(1) = $0.layer { true } else { false } }! + K)
        let step = 0.05
        for j in chosen {
            var values = f.lambda
            values[j] += step
            let up = try f.merge.lossAndGradient(f.items, values: values).loss
            values[j] -= 2 * step
            let down = try f.merge.lossAndGradient(f.items, values: values).loss
            let numeric = (up - down) / (2 * step)
            #expect(abs(numeric - gradient[j]) <= 2e-2 * abs(gradient[j]) + 1e-7, "\(family) λ[\(j)]: \(gradient[j]) vs FD \(numeric)")
        }
    }

    @Test("one SAMerging step: the SAM perturbation, the gradient there and the Adam update equal the reference's", arguments: ["bert", "llama"])
    func samStep(family: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let f = try Family(family, method: .samerging, scratch: scratch)
        let sam = f.reference["sam"] as! [String: Any]
        let (_, g) = try f.merge.lossAndGradient(f.items, values: f.lambda)
        let epsilon = EndToEndMerge.samPerturbation(values: f.lambda, gradient: g, rho: 0.07)
        #expect(relativeError(epsilon, f.matrix(sam["epsilon"])) <= 1e-4)
        let perturbed = try f.merge.lossAndGradient(f.items, values: zip(f.lambda, epsilon).map(+)).gradient
        #expect(relativeError(perturbed, f.matrix(sam["gradient_perturbed"])) <= 1e-4)
        var state = f.merge.initialState()
        state.values = f.lambda
        _ = try f.merge.advance(&state, items: f.items)
        let expectedAfter = f.matrix(sam["lambda_after"])
        // The first Adam step moves each λ by about lr: compare the moves.
        let moves = zip(state.values, f.lambda).map { $0 - $1 }, expectedMoves = zip(expectedAfter, f.lambda).map { $0 - $1 }
        #expect(relativeError(moves, expectedMoves) <= 1e-3, "\(family): Adam step")
    }
}

@Suite("End-to-end gradients, tied LM head")
struct TiedHeadGradientTests {
    @Test("a tied decoder (qwen2-tiny): ∂L/∂λ of embed_tokens, which feeds both the input and the LM head, matches finite differences",
          arguments: ["samerging", "adamerging"])
    func tiedHead(method: String) throws {
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let root = fixturesDirectory + "/models/qwen2-tiny"
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: root + "/config.json"))) as! [String: Any]
        let file = try SafetensorsFile(path: root + "/model.safetensors")
        var tunes: [ModelSource] = []
        for task in 0..<2 {
            // Each fine-tune: the base plus a seeded task vector of up to 20 % of each tensor's scale.
            let tensors = try file.tensors.map { info in
                let values = try file.floats(info.name)
                let scale = values.map(abs).max()! * 0.2
                let noise = testValues(values.count, seed: UInt64(17 + task * 1000 + values.count), scale: scale)
                return (name: info.name, shape: info.shape, values: zip(values, noise).map(+))
            }
            try writeModelDirectory(scratch + "/ft-\(task)", tensors, config: config)
            tunes.append(try ModelSource(path: scratch + "/ft-\(task)"))
        }
        let base = try ModelSource(path: root)
        let architecture = try Architecture(source: base)
        #expect(architecture.config.tieWordEmbeddings)
        let examples = (0..<2).map { task in
            (0..<3).map { n in TokenizedExample(inputIDs: (0..<(4 + n)).map { Int32(3 + ($0 * 7 + n * 5 + task * 11) % 110) }) }
        }
        var settings = DistillSettings()
        settings.batchSize = 3
        let merge = try EndToEndMerge(
            method: EndToEndMerge.Method(rawValue: method)!, settings: settings, architecture: architecture, base: LayerReader(source: base),
            fineTunes: tunes.map { LayerReader(source: $0) }, heads: nil, calibration: examples, calibrationPaths: ["a", "b"],
            scratch: scratch + "/cache", threads: 2, seed: 0)
        let items = try (0..<2).map { try merge.item(task: $0, batch: 0) }
        let K = merge.coefficients.count
        let values = (0..<(2 * K)).map { 0.3 + 0.1 * sin(Double($0)) }
        let (_, gradient) = try merge.lossAndGradient(items, values: values)
        let table = merge.coefficients.keys.firstIndex { $0.local == "embed_tokens.weight" }!
        #expect(!merge.coefficients.keys.contains { $0.local == "lm_head.weight" })
        for j in [table, table + K] {
            var shifted = values
            shifted[j] += 0.05
            let up = try merge.lossAndGradient(items, values: shifted).loss
            shifted[j] -= 0.1
            let down = try merge.lossAndGradient(items, values: shifted).loss
            let numeric = (up - down) / 0.1
            #expect(abs(numeric - gradient[j]) <= 2e-2 * abs(gradient[j]) + 1e-7, "\(method) λ[\(j)]: \(gradient[j]) vs FD \(numeric)")
        }
    }
}
