// SafetensorsHeader: parsing and validating a safetensors header, rule by rule as the reference reader does.

/// One tensor's entry in a header. `dataRange` is relative to the start of the data section.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let dataRange: Range<Int>

    public init(name: String, dtype: DType, shape: [Int], dataRange: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataRange = dataRange
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { dataRange.count }
}

/// A validated header: the tensors in data order and the string metadata.
public struct SafetensorsHeader: Sendable {
    /// Tensors sorted by their data offsets, i.e. in the order their bytes appear in the file.
    public let tensors: [TensorInfo]
    public let metadata: [String: String]
    /// Byte offset of the data section in the file: 8 + header length.
    public let dataStart: Int

    /// The most header bytes a file may declare, as the reference implementation limits it.
    public static let maximumHeaderLength: UInt64 = 100_000_000

    /// Parses and validates the header of a file of `fileSize` bytes whose first bytes are `prefix`
    /// (at least `8 + header length` of them, or the whole file if shorter).
    ///
    /// Rejects, in the reference reader's order: a file under 8 bytes; a header length over 100 MB or
    /// past the end; non-UTF-8 or non-JSON text; duplicate keys; unknown dtypes; missing or ill-typed
    /// fields; non-string metadata; offsets that overlap, leave holes or run backwards; element counts
    /// that overflow or disagree with the offsets; and data that does not end exactly at end of file.
    /// Accepts zero-sized tensors, rank-0 shapes and whitespace around the JSON.
    /// - Throws: `SafetensorsError` naming `path` and the offending tensor.
    public static func parse(prefix: UnsafeRawBufferPointer, fileSize: Int, path: String) throws(SafetensorsError) -> SafetensorsHeader {
        guard fileSize >= 8, prefix.count >= 8 else { throw .fileTooSmall(path: path, size: fileSize) }
        let length = prefix.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        guard length <= maximumHeaderLength else { throw .headerTooLarge(path: path, length: length) }
        let dataStart = 8 + Int(length)
        guard dataStart <= fileSize, dataStart <= prefix.count else {
            throw .headerPastEnd(path: path, length: length, fileSize: fileSize)
        }
        let headerBytes = Array(prefix[8..<dataStart])
        guard String(validating: headerBytes, as: UTF8.self) != nil else { throw .headerNotUTF8(path: path) }

        let root: JSONValue
        do {
            root = try JSONParser.parse(headerBytes)
        } catch let JSONParseError.duplicateKey(key) {
            throw .duplicateKey(path: path, key: key)
        } catch let JSONParseError.syntax(message, offset) {
            throw .headerNotJSON(path: path, detail: "\(message) at header byte \(offset)")
        } catch {
            throw .headerNotJSON(path: path, detail: "\(error)")
        }
        guard case let .object(entries) = root else { throw .headerNotJSON(path: path, detail: "top level is not an object") }

        var metadata: [String: String] = [:]
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(entries.keys.count)
        for (name, value) in entries.members {
            if name == "__metadata__" {
                guard case let .object(pairs) = value else {
                    throw .headerNotJSON(path: path, detail: "__metadata__ is not an object")
                }
                for (key, item) in pairs.members {
                    guard case let .string(text) = item else { throw .metadataNotString(path: path, key: key) }
                    metadata[key] = text
                }
                continue
            }
            tensors.append(try parseEntry(name: name, value: value, path: path))
        }

        tensors.sort { ($0.dataRange.lowerBound, $0.dataRange.upperBound) < ($1.dataRange.lowerBound, $1.dataRange.upperBound) }
        var previousEnd = 0
        for tensor in tensors {
            // Sorted by begin, contiguous coverage means each begin is the previous end.
            guard tensor.dataRange.lowerBound == previousEnd else {
                let problem = tensor.dataRange.lowerBound < previousEnd ? "overlaps the previous tensor" : "leaves a hole after the previous tensor"
                throw .invalidOffsets(path: path, tensor: tensor.name, detail: "begins at \(tensor.dataRange.lowerBound), \(problem) ending at \(previousEnd)")
            }
            var count = 1
            for dimension in tensor.shape {
                let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
                guard !overflow else { throw .sizeOverflow(path: path, tensor: tensor.name) }
                count = product
            }
            let (bytes, overflow) = count.multipliedReportingOverflow(by: tensor.dtype.size)
            guard !overflow else { throw .sizeOverflow(path: path, tensor: tensor.name) }
            guard bytes == tensor.dataRange.count else {
                throw .sizeMismatch(path: path, tensor: tensor.name, expected: bytes, actual: tensor.dataRange.count)
            }
            previousEnd = tensor.dataRange.upperBound
        }
        let (dataEnd, overflow) = dataStart.addingReportingOverflow(previousEnd)
        guard !overflow, dataEnd == fileSize else {
            throw .dataLengthMismatch(path: path, dataEnd: overflow ? Int.max : dataEnd, fileSize: fileSize)
        }
        return SafetensorsHeader(tensors: tensors, metadata: metadata, dataStart: dataStart)
    }

    private static func parseEntry(name: String, value: JSONValue, path: String) throws(SafetensorsError) -> TensorInfo {
        guard case let .object(fields) = value else {
            throw .invalidField(path: path, tensor: name, field: "entry", detail: "not an object")
        }
        func field(_ key: String) throws(SafetensorsError) -> JSONValue {
            guard let found = fields.value(for: key) else { throw .missingField(path: path, tensor: name, field: key) }
            return found
        }
        func naturals(_ key: String, _ value: JSONValue) throws(SafetensorsError) -> [Int] {
            guard case let .array(items) = value else { throw .invalidField(path: path, tensor: name, field: key, detail: "not an array") }
            var result: [Int] = []
            for item in items {
                guard case let .integer(number) = item, number >= 0 else {
                    throw .invalidField(path: path, tensor: name, field: key, detail: "entries must be non-negative integers")
                }
                result.append(number)
            }
            return result
        }
        guard case let .string(dtypeName) = try field("dtype") else {
            throw .invalidField(path: path, tensor: name, field: "dtype", detail: "not a string")
        }
        let shape = try naturals("shape", try field("shape"))
        let offsets = try naturals("data_offsets", try field("data_offsets"))
        guard let dtype = DType(rawValue: dtypeName) else { throw .unknownDType(path: path, tensor: name, dtype: dtypeName) }
        guard offsets.count == 2 else {
            throw .invalidField(path: path, tensor: name, field: "data_offsets", detail: "needs exactly [begin, end]")
        }
        guard offsets[0] <= offsets[1] else {
            throw .invalidOffsets(path: path, tensor: name, detail: "end \(offsets[1]) is before begin \(offsets[0])")
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataRange: offsets[0]..<offsets[1])
    }
}
