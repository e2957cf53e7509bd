// HeaderValidationTests: one hand-built malformed file per rejection rule, plus the edge cases that must be accepted.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

private func open(_ name: String) throws -> SafetensorsFile {
    try SafetensorsFile(path: fixturesDirectory + "/safetensors/" + name)
}

/// The error a malformed fixture raises, or nil if it opened.
private func rejection(_ name: String) -> SafetensorsError? {
    do { _ = try open("malformed/" + name); return nil } catch { return error as? SafetensorsError }
}

@Suite("Safetensors header validation")
struct HeaderValidationTests {
    // Each fixture breaks exactly one rule; tools/make_safetensors_fixtures.py builds them byte by byte.
    @Test("Each malformed file is rejected with the rule it breaks", arguments: [
        ("file_too_small", "shorter than the 8-byte"),
        ("header_too_large", "exceeds the 100000000-byte limit"),
        ("header_past_end", "runs past the end"),
        ("header_not_utf8", "not valid UTF-8"),
        ("header_not_json", "not valid JSON"),
        // The reference reader accepts this one; we reject it because Foundation-style readers keep the
        // last duplicate and others the first, so two tools would see different tensors.
        ("duplicate_key", "lists 'a' twice"),
        ("unknown_dtype", "tensor 'a': unknown dtype 'F8_E9M0'"),
        ("missing_dtype", "tensor 'a': missing 'dtype'"),
        ("missing_shape", "tensor 'a': missing 'shape'"),
        ("missing_data_offsets", "tensor 'a': missing 'data_offsets'"),
        ("metadata_not_string", "__metadata__ value for 'format' is not a string"),
        ("offsets_overlap", "tensor 'b': invalid data_offsets: begins at 8, overlaps"),
        ("offsets_hole", "tensor 'b': invalid data_offsets: begins at 12, leaves a hole"),
        ("offsets_not_from_zero", "tensor 'a': invalid data_offsets: begins at 4, leaves a hole"),
        ("offsets_backwards", "tensor 'a': invalid data_offsets: end 0 is before begin 24"),
        ("size_overflow", "tensor 'a': element count × dtype size overflows"),
        ("size_mismatch", "tensor 'a': shape and dtype need 16 bytes but data_offsets span 24"),
        ("trailing_bytes", "data ends at byte"),
        ("truncated_data", "data ends at byte"),
        ("negative_shape", "tensor 'a': invalid 'shape'"),
    ])
    func rejects(file: String, message: String) throws {
        let error = try #require(rejection(file + ".safetensors"), "\(file) was accepted")
        #expect(error.description.contains(message), "\(error.description)")
        #expect(error.description.contains(file + ".safetensors"), "the message must name the file")
    }

    @Test("Zero-sized tensors and rank-0 shapes are accepted")
    func zeroSizedAndRankZero() throws {
        let zero = try open("valid/zero_sized.safetensors")
        #expect(zero.info("empty")?.shape == [0, 4])
        #expect(try zero.floats("a") == [0, 1, 2, 3, 4, 5])
        let scalar = try open("valid/rank0.safetensors")
        #expect(scalar.info("s")?.shape == [])
        #expect(try scalar.floats("s") == [2.5])
    }

    @Test("Whitespace around the header JSON is accepted")
    func whitespacePadding() throws {
        #expect(try open("valid/whitespace_padded.safetensors").floats("a") == [0, 1, 2, 3, 4, 5])
    }

    @Test("Unaligned elements of every float dtype read correctly; metadata is kept")
    func unalignedElements() throws {
        let file = try open("valid/unaligned.safetensors")
        #expect(try file.floats("f32") == [1.5, -2.25])
        #expect(try file.floats("bf16") == [1.5, -2.25])
        #expect(try file.floats("f16") == [0.5, -1.0])
        #expect(try file.floats("f64") == [3.0, -0.125])
        #expect(try file.floats("i64") == [-7, 9])
        #expect(try file.floats("u8") == [1, 2, 3])
        #expect(file.header.metadata == ["format": "pt"])
    }

    @Test("Random byte mutations of a valid file never crash the reader")
    func mutationFuzz() throws {
        let original = try Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/safetensors/valid/unaligned.safetensors"))
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var generator = SystemRandomNumberGenerator()
        var rejected = 0
        for trial in 0..<300 {
            var bytes = [UInt8](original)
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if trial % 7 == 0 { bytes.removeLast(Int.random(in: 1...bytes.count, using: &generator)) }
            let path = directory + "/m\(trial).safetensors"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            do {
                let file = try SafetensorsFile(path: path)
                for tensor in file.tensors { _ = try file.floats(tensor.name) }
            } catch is SafetensorsError {
                rejected += 1
            }
        }
        #expect(rejected > 0)
    }
}
