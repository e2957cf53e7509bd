// SafetensorsError: every way a safetensors file or a sharded model can be malformed, naming file and tensor.

/// A malformed or unreadable safetensors file or model directory. Each case names the file and,
/// where there is one, the tensor, so a user can find the culprit among many shards.
public enum SafetensorsError: Error, CustomStringConvertible, Sendable, Equatable {
    case fileTooSmall(path: String, size: Int)
    case headerTooLarge(path: String, length: UInt64)
    case headerPastEnd(path: String, length: UInt64, fileSize: Int)
    case headerNotUTF8(path: String)
    case headerNotJSON(path: String, detail: String)
    case duplicateKey(path: String, key: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case missingField(path: String, tensor: String, field: String)
    case invalidField(path: String, tensor: String, field: String, detail: String)
    case metadataNotString(path: String, key: String)
    case invalidOffsets(path: String, tensor: String, detail: String)
    case sizeOverflow(path: String, tensor: String)
    case sizeMismatch(path: String, tensor: String, expected: Int, actual: Int)
    case dataLengthMismatch(path: String, dataEnd: Int, fileSize: Int)
    case invalidIndex(path: String, detail: String)
    case noWeights(path: String)
    case tensorNotFound(path: String, tensor: String)

    public var description: String {
        switch self {
        case let .fileTooSmall(path, size):
            "\(path): not a safetensors file: \(size) bytes, shorter than the 8-byte header length"
        case let .headerTooLarge(path, length):
            "\(path): header length \(length) exceeds the 100000000-byte limit"
        case let .headerPastEnd(path, length, fileSize):
            "\(path): header length \(length) runs past the end of the \(fileSize)-byte file (truncated?)"
        case let .headerNotUTF8(path):
            "\(path): header is not valid UTF-8"
        case let .headerNotJSON(path, detail):
            "\(path): header is not valid JSON: \(detail)"
        case let .duplicateKey(path, key):
            "\(path): header lists '\(key)' twice"
        case let .unknownDType(path, tensor, dtype):
            "\(path): tensor '\(tensor)': unknown dtype '\(dtype)'"
        case let .missingField(path, tensor, field):
            "\(path): tensor '\(tensor)': missing '\(field)'"
        case let .invalidField(path, tensor, field, detail):
            "\(path): tensor '\(tensor)': invalid '\(field)': \(detail)"
        case let .metadataNotString(path, key):
            "\(path): __metadata__ value for '\(key)' is not a string"
        case let .invalidOffsets(path, tensor, detail):
            "\(path): tensor '\(tensor)': invalid data_offsets: \(detail)"
        case let .sizeOverflow(path, tensor):
            "\(path): tensor '\(tensor)': element count × dtype size overflows"
        case let .sizeMismatch(path, tensor, expected, actual):
            "\(path): tensor '\(tensor)': shape and dtype need \(expected) bytes but data_offsets span \(actual)"
        case let .dataLengthMismatch(path, dataEnd, fileSize):
            "\(path): tensor data ends at byte \(dataEnd) but the file has \(fileSize) bytes (truncated or trailing bytes)"
        case let .invalidIndex(path, detail):
            "\(path): invalid index: \(detail)"
        case let .noWeights(path):
            "\(path): no .safetensors weights found"
        case let .tensorNotFound(path, tensor):
            "\(path): tensor '\(tensor)' not found"
        }
    }
}
