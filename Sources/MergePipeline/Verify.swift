// Verify: re-hashes an output directory (and optionally its inputs) against its manifest.
import Checksum
import FileIO
import Foundation
import SafetensorsFormat

/// What `verify` checked.
public struct VerifyReport: Sendable {
    public var files: Int
    public var tensors: Int
    public var inputs: Int
}

/// Checks every output file's size and XXH3-128, every tensor's XXH3-64 and, with `inputs`, every
/// input file. Throws at the first mismatch, naming the file or tensor.
public func verifyOutput(directory: String, inputs: Bool) throws -> VerifyReport {
    let manifest = try Manifest.load(directory: directory)
    func check(_ record: Manifest.FileRecord, at path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw MergeError.verification(path: path, detail: "file is missing")
        }
        let hasher = XXH3Hasher(.bits128)
        let size = try FileReader.forEachPiece(of: path) { hasher.update($0) }
        guard size == record.size else { throw MergeError.verification(path: path, detail: "size \(size), manifest says \(record.size)") }
        let digest = hasher.hexDigest()
        guard digest == record.xxh3_128 else {
            throw MergeError.verification(path: path, detail: "XXH3-128 \(digest), manifest says \(record.xxh3_128)")
        }
    }
    // Tensors first: a flipped byte is then reported by tensor name, the most useful answer.
    var opened: [String: SafetensorsFile] = [:]
    for record in manifest.tensors {
        let path = directory + "/" + record.file
        let file = try opened[record.file] ?? SafetensorsFile(path: path)
        opened[record.file] = file
        guard let info = file.info(record.name) else { throw MergeError.verification(path: path, detail: "tensor '\(record.name)' is missing") }
        guard info.dtype.rawValue == record.dtype, info.shape == record.shape else {
            throw MergeError.verification(path: path, detail: "tensor '\(record.name)' has dtype \(info.dtype.rawValue) shape \(info.shape), manifest says \(record.dtype) \(record.shape)")
        }
        let hasher = XXH3Hasher(.bits64)
        hasher.update(UnsafeRawBufferPointer(start: file.dataAddress(of: info), count: info.byteCount))
        file.mapping.releaseCovering(file.fileRange(of: info))
        guard hasher.hexDigest() == record.xxh3_64 else {
            throw MergeError.verification(path: path, detail: "tensor '\(record.name)' XXH3-64 \(hasher.hexDigest()), manifest says \(record.xxh3_64)")
        }
    }
    for record in manifest.outputs { try check(record, at: directory + "/" + record.path) }
    if inputs { for record in manifest.inputs { try check(record, at: record.path) } }
    return VerifyReport(files: manifest.outputs.count, tensors: manifest.tensors.count, inputs: inputs ? manifest.inputs.count : 0)
}
