// CommandLineTests: the streammerge executable end to end — outputs, determinism, verify, and bad input.
import Foundation
import MergeMethods
import SafetensorsFormat
import Testing
import TestSupport

@Suite("streammerge end to end", .serialized)
struct CommandLineTests {
    @Test("Each method writes a complete, verifiable output; heads and tokenizer files are kept",
          arguments: ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"])
    func mergeAndVerify(method: String) throws {
        let family = try TestFamily()
        defer { family.remove() }
        let out = family.directory + "/out"
        let result = try runStreammerge(["merge", try family.config(method), "--out", out, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let summary = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as! [String: Any]
        #expect(summary["tensors"] as? Int == 1 + 3 * family.blocks + 2)
        for file in ["model.safetensors", "config.json", "tokenizer.json", "heads/ft-2.safetensors", "merge-manifest.json"] {
            #expect(FileManager.default.fileExists(atPath: out + "/" + file), "\(file) missing")
        }
        #expect(!FileManager.default.fileExists(atPath: out + "/.streammerge"), "the journal must be removed on success")
        let head = try SafetensorsFile(path: out + "/heads/ft-2.safetensors")
        #expect(head.tensors.map(\.name) == ["score.weight"])
        let verify = try runStreammerge(["verify", out, "--inputs"])
        #expect(verify.status == 0, "\(verify.stderr)")
    }

    @Test("Two runs, and --threads 1 vs --threads 2, give byte-identical outputs")
    func reproducible() throws {
        let family = try TestFamily(blocks: 2, width: 64)
        defer { family.remove() }
        for method in ["ties", "dare_ties"] {
            let config = try family.config(method, extra: "dtype: bfloat16\n")
            var outputs: [[String: Data]] = []
            for (run, threads) in [(0, "1"), (1, "2"), (2, "2")] {
                let out = family.directory + "/\(method)-\(run)"
                let result = try runStreammerge(["merge", config, "--out", out, "--threads", threads, "--shard-size", "20KB"])
                #expect(result.status == 0, "\(result.stderr)")
                outputs.append(try outputFiles(out))
            }
            #expect(outputs[0].keys.contains("model.safetensors.index.json"), "20KB shards must split the output")
            #expect(outputs[0] == outputs[1])
            #expect(outputs[1] == outputs[2])
        }
    }

    @Test("Tensors of many chunks: --threads 1, 2 and 5 give byte-identical outputs whose input hashes verify")
    func reproducibleAcrossWindows() throws {
        // Width 1024: tensors of 16 and 32 chunks, so workers reload their input slots within a window
        // and hash chunks in order as runs of them finish, with rings of 2, 4 and 10 chunks.
        let family = try TestFamily(blocks: 1, width: 1024, dtype: .bf16, extraHead: false)
        defer { family.remove() }
        for method in ["task_arithmetic", "ties", "dare_ties"] {
            var outputs: [[String: Data]] = []
            for threads in ["1", "2", "5"] {
                let out = family.directory + "/\(method)-\(threads)"
                let result = try runStreammerge(["merge", try family.config(method), "--out", out, "--threads", threads])
                #expect(result.status == 0, "\(result.stderr)")
                let verify = try runStreammerge(["verify", out, "--inputs"])
                #expect(verify.status == 0, "\(method), \(threads) threads: \(verify.stderr)")
                outputs.append(try outputFiles(out))
            }
            #expect(outputs[0] == outputs[1], "\(method)")
            #expect(outputs[1] == outputs[2], "\(method)")
        }
    }

    @Test("TIES on tensors large enough for sampled bands equals the histogram select over the same inputs")
    func tiesSampledBandsThroughFiles() throws {
        // Width 1024: up_proj holds 2²¹ elements (32 chunks), so the merge counts its thresholds in bands
        // from a sample read through the window buffers; the in-memory merge takes the histograms.
        let family = try TestFamily(blocks: 1, width: 1024, dtype: .bf16, extraHead: false)
        defer { family.remove() }
        let out = family.directory + "/out"
        let result = try runStreammerge(["merge", try family.config("ties", extra: "dtype: float32\n"), "--out", out, "--threads", "2"])
        #expect(result.status == 0, "\(result.stderr)")
        let merged = try SafetensorsFile(path: out + "/model.safetensors")
        let inputs = try (["base"] + (0..<3).map { "ft-\($0)" }).map { try SafetensorsFile(path: family.directory + "/\($0)/model.safetensors") }
        for name in ["model.layers.0.mlp.up_proj.weight"] {
            let values = try inputs.map { try $0.floats(name) }
            let parameters = TensorMergeParameters(weights: [1, 0.8, 0.6], densities: [0.5, 0.5, 0.5], lambda: 1, normalize: true)
            let merger = TensorMerger(method: .ties, parameters: parameters, elementCount: values[0].count, canonicalName: name, seed: 3,
                                      chunkSize: 1 << 16, read: { model, elements, destination in
                                          for (offset, j) in elements.enumerated() { destination[offset] = values[(model ?? -1) + 1][j] }
                                      })
            merger.bandMinimumElements = .max
            let workspaces = [MergeWorkspace(modelCount: 3)]
            merger.prepare(threads: 1, workspaces: workspaces, window: 8)
            var expected = [Float](repeating: .nan, count: values[0].count)
            expected.withUnsafeMutableBufferPointer { expected in
                merger.mergeWindow(first: 0, count: merger.chunkCount, workspaces: workspaces, threads: 1) { slot, offset, block, n in
                    for j in 0..<n { expected[slot * (1 << 16) + offset + j] = block[j] }
                }
            }
            #expect(try merged.floats(name).map(\.bitPattern) == expected.map(\.bitPattern), "\(name)")
        }
    }

    @Test("verify names the tensor whose byte was flipped, and exits 1")
    func verifyDetectsFlip() throws {
        let family = try TestFamily()
        defer { family.remove() }
        let out = family.directory + "/out"
        #expect(try runStreammerge(["merge", try family.config("ties"), "--out", out]).status == 0)
        let file = try SafetensorsFile(path: out + "/model.safetensors")
        let target = try #require(file.info("model.layers.1.mlp.up_proj.weight"))
        let offset = file.fileRange(of: target).lowerBound + 5
        var bytes = try Data(contentsOf: URL(fileURLWithPath: out + "/model.safetensors"))
        bytes[offset] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: out + "/model.safetensors"))
        let result = try runStreammerge(["verify", out])
        #expect(result.status == 1)
        #expect(result.stderr.contains("model.layers.1.mlp.up_proj.weight"), "\(result.stderr)")
        #expect(result.stderr.contains("model.safetensors"))
    }
}
