// ProDistillTests: the batch order against the PyTorch reference's, and training identities on fixture families.
import Foundation
import Distillation
import ModelArchitectures
import SafetensorsFormat
import Testing
import TestSupport

@Suite("ProDistill")
struct ProDistillTests {
    @Test("the per-epoch batch order is the reference's Fisher–Yates over splitmix64 counters")
    func batchOrder() throws {
        let expected = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/distill/bert/expected.json"))) as! [String: Any]
        let batches = expected["batches"] as! [[String: Any]]
        let pairs = batches.map { (task: $0["task"] as! Int, batch: ($0["first"] as! Int) / 4) }
        for record in (expected["layers"] as! [[String: Any]]) {
            guard let layer = record["layer"] as? Int else { continue }
            for (epoch, order) in (record["batch_order"] as! [[Int]]).enumerated() {
                let ours = ProDistill.batchOrder(pairs, seed: 7, layer: layer, epoch: epoch)
                #expect(ours.map { p in pairs.firstIndex { $0 == p }! } == order, "layer \(layer) epoch \(epoch)")
            }
        }
    }

    @Test("one fine-tune: training drives the block loss towards zero (λ → 1 reproduces the teacher)")
    func singleTask() throws {
        let root = fixturesDirectory + "/distill/bert"
        let base = try ModelSource(path: root + "/base"), tune = try ModelSource(path: root + "/ft-a")
        var settings = DistillSettings()
        settings.epochs = 30
        settings.learningRate = 0.05
        settings.batchSize = 4
        settings.initialLambda = 0.3
        let scratch = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let distill = try ProDistill(
            settings: settings, architecture: try Architecture(source: base), base: LayerReader(source: base),
            fineTunes: [LayerReader(source: tune)], calibration: [try TokenizedExample.readJSONL(root + "/calib/a.jsonl")],
            calibrationPaths: [root + "/calib/a.jsonl"], scratch: scratch, outputDType: .f32, threads: 2, seed: 1)
        try distill.prepareEmbeddings()
        let (_, statistics, _) = try distill.trainBlock(0)
        print("single task", statistics)
        #expect(statistics.loss_before > 0)
        #expect(statistics.loss_after < 0.05 * statistics.loss_before)
    }
}
