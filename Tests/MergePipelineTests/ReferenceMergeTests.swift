// ReferenceMergeTests: every fixture config merged by us equals the independent numpy reference
// (tools/reference_merge.py, cross-checked against mergekit): f32 within 1e-6 relative, bf16 bit-equal.
import Foundation
import MergePipeline
import SafetensorsFormat
import Testing
import TestSupport

/// (family, config stem) pairs that have an expected output under Fixtures/merge.
private let referenceCases: [(String, String)] = {
    let root = fixturesDirectory + "/merge"
    let families = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted()
    return families.flatMap { family -> [(String, String)] in
        let expected = ((try? FileManager.default.contentsOfDirectory(atPath: "\(root)/\(family)/expected")) ?? []).sorted()
        return expected.filter { $0.hasSuffix(".safetensors") }.map { (family, String($0.dropLast(".safetensors".count))) }
    }
}()

@Suite("Merges equal the independent reference")
struct ReferenceMergeTests {
    @Test("The fixture families cover f32 and bf16, sharded and single-file, every method")
    func coverage() {
        let families = Set(referenceCases.map(\.0))
        #expect(families.count >= 3, "families: \(families)")
        let stems = Set(referenceCases.map(\.1))
        for method in ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"] {
            #expect(stems.contains(method), "no expected output for \(method)")
        }
    }

    @Test("Merged tensors match the reference", arguments: referenceCases.map { "\($0.0)/\($0.1)" })
    func matchesReference(caseName: String) throws {
        let parts = caseName.split(separator: "/").map(String.init)
        let root = fixturesDirectory + "/merge/" + parts[0]
        let out = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let config = try MergeConfig.load(path: "\(root)/configs/\(parts[1]).yaml")
        _ = try executeMerge(try MergePlan(config: config, shardSize: 4096), options: MergeOptions(outputDirectory: out, threads: 2, force: true))
        let merged = try ModelSource(path: out)
        let expected = try SafetensorsFile(path: "\(root)/expected/\(parts[1]).safetensors")
        #expect(Set(merged.names) == Set(expected.tensors.map(\.name)))
        for reference in expected.tensors {
            let (file, info) = try #require(merged.tensor(reference.name), "\(reference.name) missing from the output")
            #expect(info.dtype == reference.dtype && info.shape == reference.shape, "\(reference.name)")
            if reference.dtype == .f32 {
                let (error, index) = maxRelativeError(try file.floats(reference.name), try expected.floats(reference.name))
                #expect(error <= 1e-6, "\(reference.name): relative error \(error) at \(index)")
            } else {
                let ours = UnsafeRawBufferPointer(start: file.dataAddress(of: info), count: info.byteCount)
                let theirs = UnsafeRawBufferPointer(start: expected.dataAddress(of: reference), count: reference.byteCount)
                let differing = zip(ours, theirs).filter { $0 != $1 }.count
                #expect(differing == 0, "\(reference.name): \(differing) bytes differ from the reference")
            }
        }
    }
}
