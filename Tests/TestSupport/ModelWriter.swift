// ModelWriter: builds small HF-style model directories in tests, and runs the streammerge executable.
import Foundation
import SafetensorsFormat

/// Writes `tensors` (f32 values, stored as `dtype`) as a safetensors file at `path`.
public func writeSafetensors(_ path: String, _ tensors: [(name: String, shape: [Int], values: [Float])], dtype: DType = .f32) throws {
    let layout = SafetensorsLayout(tensors.map { TensorSpec(name: $0.name, dtype: dtype, shape: $0.shape) })
    var bytes = layout.headerBytes
    for tensor in tensors {
        var data = [UInt8](repeating: 0, count: tensor.values.count * dtype.size)
        tensor.values.withUnsafeBufferPointer { convertFromFloat(&data, from: $0.baseAddress!, dtype: dtype, count: tensor.values.count) }
        bytes += data
    }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// A model directory with `config.json` and `model.safetensors`.
public func writeModelDirectory(_ directory: String, _ tensors: [(name: String, shape: [Int], values: [Float])],
                                dtype: DType = .f32, config: [String: Any] = ["model_type": "llama"]) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    try writeSafetensors(directory + "/model.safetensors", tensors, dtype: dtype)
    try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: directory + "/config.json"))
}

/// Deterministic values in [−scale, scale).
public func testValues(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return (Float(state >> 40) / Float(1 << 24) - 0.5) * 2 * scale
    }
}

/// The `streammerge` binary built beside the test bundle.
public let streammergeExecutable: String = {
    let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    return bundle.appendingPathComponent("streammerge").path
}()

/// The outcome of running a command.
public struct CommandResult {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs `streammerge` with `arguments` (through `/bin/sh -c` when `shellPrefix` is given, e.g. a ulimit).
@discardableResult
public func runStreammerge(_ arguments: [String], shellPrefix: String? = nil) throws -> CommandResult {
    let process = Process()
    if let shellPrefix {
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        let quoted = ([streammergeExecutable] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        process.arguments = ["-c", shellPrefix + "; exec " + quoted.joined(separator: " ")]
    } else {
        process.executableURL = URL(fileURLWithPath: streammergeExecutable)
        process.arguments = arguments
    }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
    let stderrData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
                         stderr: String(decoding: stderrData, as: UTF8.self))
}
