// CommandLineTests: the streammerge executable end to end — outputs, determinism, verify, and bad input.
import Foundation
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
