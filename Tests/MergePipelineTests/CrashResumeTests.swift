// CrashResumeTests: kill -9 at random points, then --resume, must end byte-identical to an uninterrupted run.
import Foundation
import Testing
import TestSupport

@Suite("Crash and resume", .serialized)
struct CrashResumeTests {
    @Test("kill -9 at random points and --resume give the uninterrupted output", arguments: ["ties", "dare_linear"])
    func killAndResume(method: String) throws {
        let family = try TestFamily(blocks: 8, width: 192)
        defer { family.remove() }
        let config = try family.config(method, extra: "dtype: bfloat16\n")
        let reference = family.directory + "/reference"
        let started = Date()
        #expect(try runStreammerge(["merge", config, "--out", reference, "--shard-size", "300KB"]).status == 0)
        let duration = Date().timeIntervalSince(started)
        let expected = try outputFiles(reference)
        #expect(expected.keys.filter { $0.hasSuffix(".safetensors") }.count > 2, "the test needs several shards")

        var generator = SystemRandomNumberGenerator()
        var resumedAfterKill = 0
        for trial in 0..<3 {
            let out = family.directory + "/crash-\(trial)"
            var interruptions = 0
            var resume = false
            // Kill at random points until two kills have landed mid-run; a run that finishes before its
            // kill (timing on a loaded machine) is discarded and started again.
            for _ in 0..<20 where interruptions < 2 {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: streammergeExecutable)
                process.arguments = ["merge", config, "--out", out, "--shard-size", "300KB", "--quiet"] + (resume ? ["--resume"] : [])
                process.standardError = FileHandle.nullDevice
                try process.run()
                usleep(UInt32(Double.random(in: 0.05...0.6, using: &generator) * duration * 1e6))
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                if process.terminationReason == .uncaughtSignal {
                    interruptions += 1
                    // A kill before the journal's first write leaves nothing to resume: start afresh then.
                    resume = FileManager.default.fileExists(atPath: out + "/.streammerge/journal.json")
                    if resume { resumedAfterKill += 1 } else { try? FileManager.default.removeItem(atPath: out) }
                } else {
                    #expect(process.terminationStatus == 0)
                    try? FileManager.default.removeItem(atPath: out)
                    resume = false
                }
            }
            let finish = try runStreammerge(["merge", config, "--out", out, "--shard-size", "300KB"] + (resume ? ["--resume"] : []))
            #expect(finish.status == 0, "\(finish.stderr)")
            #expect(interruptions > 0, "no kill landed mid-run")
            #expect(try outputFiles(out) == expected, "trial \(trial) differs after \(interruptions) kills")
            #expect(try runStreammerge(["verify", out, "--inputs"]).status == 0)
        }
        #expect(resumedAfterKill > 0, "no kill left a journal to resume from")
    }
}
