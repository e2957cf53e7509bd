// MappedReadTests: tensors read twice through the mapping merge to the same bytes, tensor hashes and input hashes as through pread.
import Foundation
import MergePipeline
import Testing
import TestSupport

@Suite("Tensors read through the mapping")
struct MappedReadTests {
    @Test("TIES and L1-rescaled DARE-TIES: the same output and manifest with their tensors mapped or read, on 2 and 5 threads")
    func mappedEqualsRead() throws {
        // Width 1024: tensors of 16 and 32 chunks, several windows each, so mapped windows are released
        // while later ones are merged.
        let family = try TestFamily(blocks: 1, width: 1024, dtype: .bf16, extraHead: false)
        defer { family.remove() }
        for (method, extra) in [("ties", ""), ("dare_ties", "parameters: {rescale_norm: l1}\n")] {
            let config = try MergeConfig.load(path: try family.config(method, extra: extra))
            let plan = try MergePlan(config: config)
            let twice = plan.tensors.filter { plan.readsThroughMapping($0, mappedTensorBytes: .max) }
            #expect(twice.count == plan.tensors.count, "\(method): every tensor is read twice")
            #expect(twice.allSatisfy { plan.readsThroughMapping($0, mappedTensorBytes: MergePlan.defaultMappedTensorBytes) })
            #expect(!twice.contains { plan.readsThroughMapping($0, mappedTensorBytes: 0) })
            var outputs: [String: [String: Data]] = [:]
            for (mapped, threads) in [(0, 2), (MergePlan.defaultMappedTensorBytes, 2), (MergePlan.defaultMappedTensorBytes, 5)] {
                let out = family.directory + "/\(method)-\(mapped)-\(threads)"
                var options = MergeOptions(outputDirectory: out, threads: threads)
                options.mappedTensorBytes = mapped
                _ = try executeMerge(plan, options: options)
                outputs["\(mapped == 0 ? "read" : "mapped"), \(threads) threads"] = try outputFiles(out)
            }
            let read = try #require(outputs["read, 2 threads"])
            for (name, files) in outputs { #expect(files == read, "\(method), \(name) differs from pread on 2 threads") }
        }
    }
}
