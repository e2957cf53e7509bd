// LayoutAndConversionTests: the writer's layout reads back through the validator; f32 → bf16/f16 rounding.
import Foundation
import SafetensorsFormat
import Testing
import TestSupport

@Suite("Layout and dtype conversion")
struct LayoutAndConversionTests {
    @Test("A written layout passes validation and reads back, header padded to 8 bytes")
    func layoutRoundTrip() throws {
        let specs = [
            TensorSpec(name: "w \"quoted\"", dtype: .bf16, shape: [3, 2]),
            TensorSpec(name: "b", dtype: .f32, shape: [5]),
            TensorSpec(name: "ids", dtype: .i64, shape: [1]),
            TensorSpec(name: "scalar", dtype: .f16, shape: []),
        ]
        let layout = SafetensorsLayout(specs)
        #expect((layout.headerBytes.count - 8) % 8 == 0)
        var bytes = layout.headerBytes
        let values: [Float] = [1, -2, 3.5, 0.25, -0.125, 8]
        var bf16 = [UInt8](repeating: 0, count: 12)
        values.withUnsafeBufferPointer { source in convertFromFloat(&bf16, from: source.baseAddress!, dtype: .bf16, count: 6) }
        bytes += bf16
        bytes += [Float](repeating: 7, count: 5).withUnsafeBytes { Array($0) }
        bytes += withUnsafeBytes(of: Int64(42)) { Array($0) }
        bytes += withUnsafeBytes(of: Float16(0.5)) { Array($0) }
        #expect(bytes.count == layout.fileSize)
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/x.safetensors"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let file = try SafetensorsFile(path: path)
        #expect(try file.floats("w \"quoted\"") == values)
        #expect(try file.floats("b") == [7, 7, 7, 7, 7])
        #expect(try file.floats("ids") == [42])
        #expect(try file.floats("scalar") == [0.5])
        #expect(file.header.metadata["format"] == "pt")
    }

    @Test("f32 → bf16 rounds to nearest, ties to even, as PyTorch does")
    func bfloat16Rounding() {
        let one: UInt32 = 0x3F80_0000
        // Exactly halfway between 0x3F80 and 0x3F81: ties to the even 0x3F80.
        #expect(floatToBFloat16(Float(bitPattern: one | 0x8000)) == 0x3F80)
        // Halfway between 0x3F81 and 0x3F82: ties to the even 0x3F82.
        #expect(floatToBFloat16(Float(bitPattern: one | 0x1_8000)) == 0x3F82)
        // Just above halfway rounds up; just below rounds down.
        #expect(floatToBFloat16(Float(bitPattern: one | 0x8001)) == 0x3F81)
        #expect(floatToBFloat16(Float(bitPattern: one | 0x7FFF)) == 0x3F80)
        // Rounding can carry into the exponent and overflow to infinity.
        #expect(floatToBFloat16(Float.greatestFiniteMagnitude) == 0x7F80)
        #expect(floatToBFloat16(-Float.infinity) == 0xFF80)
        #expect(floatToBFloat16(Float.nan) == 0x7FC0)
        #expect(floatToBFloat16(-0.0) == 0x8000)
        for bits in stride(from: UInt16(0), to: 0x7F80, by: 97) {
            #expect(floatToBFloat16(bfloat16ToFloat(bits)) == bits, "bf16 values must round-trip exactly")
        }
    }

    @Test("f32 → f16 rounds to nearest even")
    func float16Rounding() {
        var out = [UInt16](repeating: 0, count: 2)
        let values: [Float] = [1 + 1.0 / 2048, 1 + 3.0 / 2048]  // both exactly halfway between f16 neighbours
        values.withUnsafeBufferPointer { convertFromFloat(&out, from: $0.baseAddress!, dtype: .f16, count: 2) }
        #expect(out == [0x3C00, 0x3C02])
    }
}
