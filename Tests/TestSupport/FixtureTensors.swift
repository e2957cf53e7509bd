// FixtureTensors: loading golden tensors from Fixtures/ and comparing float arrays with tolerances.
import SafetensorsFormat

/// Every tensor of a safetensors fixture, converted to f32.
/// - Parameter relativePath: path under the repository's `Fixtures/` directory.
public func loadFixtureTensors(_ relativePath: String) throws -> [String: (shape: [Int], values: [Float])] {
    let file = try SafetensorsFile(path: fixturesDirectory + "/" + relativePath)
    var result: [String: (shape: [Int], values: [Float])] = [:]
    for tensor in file.tensors { result[tensor.name] = (tensor.shape, try file.floats(tensor.name)) }
    return result
}

/// The largest |a − b| / max(|b|, floor) over two equal-length arrays, and where it occurs.
/// The floor keeps near-zero reference values from turning rounding noise into huge ratios.
public func maxRelativeError(_ actual: [Float], _ expected: [Float], floor: Float = 1e-6) -> (error: Float, index: Int) {
    precondition(actual.count == expected.count, "length \(actual.count) vs \(expected.count)")
    var worst: Float = 0
    var at = -1
    for i in 0..<actual.count {
        let error = abs(actual[i] - expected[i]) / max(abs(expected[i]), floor)
        if error > worst || error.isNaN { worst = error; at = i }
    }
    return (worst, at)
}
