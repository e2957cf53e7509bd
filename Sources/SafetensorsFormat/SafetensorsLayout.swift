// SafetensorsLayout: the header and data offsets of a file to be written, known before any data is.

/// A tensor to be written: its name, dtype and shape. Its bytes come later, streamed in order.
public struct TensorSpec: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]

    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    public var byteCount: Int { shape.reduce(1, *) * dtype.size }
}

/// The complete layout of an output file. Data is laid out in the order given (the order a merge
/// produces it), which lets the writer stream; the header therefore lists offsets in that order.
/// The JSON is padded with spaces to a multiple of 8 bytes, as the reference writer does, so that the
/// data section starts aligned.
public struct SafetensorsLayout: Sendable {
    public let tensors: [TensorInfo]
    /// The 8-byte length followed by the padded JSON header.
    public let headerBytes: [UInt8]

    public init(_ specs: [TensorSpec], metadata: [String: String] = ["format": "pt"]) {
        var offset = 0
        var tensors: [TensorInfo] = []
        var json = "{"
        if !metadata.isEmpty {
            let pairs = metadata.keys.sorted().map { "\(jsonString($0)):\(jsonString(metadata[$0]!))" }
            json += "\"__metadata__\":{\(pairs.joined(separator: ","))}"
        }
        for spec in specs {
            let range = offset..<(offset + spec.byteCount)
            tensors.append(TensorInfo(name: spec.name, dtype: spec.dtype, shape: spec.shape, dataRange: range))
            if json.count > 1 { json += "," }
            let shape = spec.shape.map(String.init).joined(separator: ",")
            json += "\(jsonString(spec.name)):{\"dtype\":\"\(spec.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(range.lowerBound),\(range.upperBound)]}"
            offset = range.upperBound
        }
        json += "}"
        var body = Array(json.utf8)
        body.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - body.count % 8) % 8))
        var header = withUnsafeBytes(of: UInt64(body.count).littleEndian) { Array($0) }
        header.append(contentsOf: body)
        self.tensors = tensors
        headerBytes = header
    }

    public var dataByteCount: Int { tensors.last?.dataRange.upperBound ?? 0 }
    public var fileSize: Int { headerBytes.count + dataByteCount }
}

/// A JSON string literal for `text`, escaping quotes, backslashes and control characters.
public func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case let c where c.value < 0x20:
            let hex = String(c.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
