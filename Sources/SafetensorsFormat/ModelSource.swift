// ModelSource: a model given as one .safetensors file or an HF directory (single file or sharded with an index).
import Foundation

/// The weights of one model: every safetensors file it consists of, mapped and validated, and where
/// each tensor lives.
///
/// A directory is resolved in this order: `model.safetensors.index.json` (sharded; every listed file
/// must exist and hold exactly the tensors the index assigns to it); otherwise `model.safetensors`;
/// otherwise every `*.safetensors` file in it, in name order, with no tensor name repeated.
public final class ModelSource: @unchecked Sendable {
    /// The path as given (directory or file).
    public let path: String
    /// The directory holding config and tokenizer files, if the model is a directory.
    public let directory: String?
    public let files: [SafetensorsFile]
    /// Tensor name (as stored) → file index in `files` and the tensor's entry.
    public let locations: [String: (file: Int, info: TensorInfo)]
    /// Names in storage order: file by file, by data offset.
    public let names: [String]
    /// `config.json` of a directory model, if present.
    public let config: [String: Any]?

    public init(path: String) throws {
        self.path = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw SafetensorsError.noWeights(path: path)
        }
        var weightFiles: [String]
        var assignment: [String: String]? = nil
        if isDirectory.boolValue {
            directory = path
            let indexPath = path + "/model.safetensors.index.json"
            if FileManager.default.fileExists(atPath: indexPath) {
                let map = try Self.readIndex(indexPath)
                assignment = map
                weightFiles = Set(map.values).sorted().map { path + "/" + $0 }
            } else if FileManager.default.fileExists(atPath: path + "/model.safetensors") {
                weightFiles = [path + "/model.safetensors"]
            } else {
                let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                weightFiles = entries.filter { $0.hasSuffix(".safetensors") }.sorted().map { path + "/" + $0 }
            }
            guard !weightFiles.isEmpty else { throw SafetensorsError.noWeights(path: path) }
            let configPath = path + "/config.json"
            if let data = FileManager.default.contents(atPath: configPath) {
                guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                    throw SafetensorsError.invalidIndex(path: configPath, detail: "config.json is not a JSON object")
                }
                config = object
            } else {
                config = nil
            }
        } else {
            directory = nil
            weightFiles = [path]
            config = nil
        }

        var files: [SafetensorsFile] = []
        var locations: [String: (file: Int, info: TensorInfo)] = [:]
        var names: [String] = []
        for (number, filePath) in weightFiles.enumerated() {
            let file = try SafetensorsFile(path: filePath)
            for tensor in file.tensors {
                if let previous = locations[tensor.name] {
                    throw SafetensorsError.invalidIndex(
                        path: filePath, detail: "tensor '\(tensor.name)' also appears in \(files[previous.file].path)")
                }
                if let assignment, assignment[tensor.name] != (filePath as NSString).lastPathComponent {
                    throw SafetensorsError.invalidIndex(
                        path: filePath, detail: "tensor '\(tensor.name)' is not assigned to this file by the index")
                }
                locations[tensor.name] = (number, tensor)
                names.append(tensor.name)
            }
            files.append(file)
        }
        if let assignment {
            for name in assignment.keys.sorted() where locations[name] == nil {
                throw SafetensorsError.tensorNotFound(path: path + "/" + assignment[name]!, tensor: name)
            }
        }
        self.files = files
        self.locations = locations
        self.names = names
    }

    /// Reads `model.safetensors.index.json`'s `weight_map`, refusing file names that leave the directory.
    private static func readIndex(_ indexPath: String) throws -> [String: String] {
        guard let data = FileManager.default.contents(atPath: indexPath),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw SafetensorsError.invalidIndex(path: indexPath, detail: "not a JSON object")
        }
        guard let map = object["weight_map"] as? [String: String] else {
            throw SafetensorsError.invalidIndex(path: indexPath, detail: "missing or invalid 'weight_map'")
        }
        for (name, file) in map where file.contains("/") || file.contains("\\") || file.contains("..") || file.isEmpty {
            throw SafetensorsError.invalidIndex(path: indexPath, detail: "tensor '\(name)' maps to '\(file)', which is not a plain file name")
        }
        return map
    }

    /// The file and entry of a tensor by its stored name.
    public func tensor(_ name: String) -> (file: SafetensorsFile, info: TensorInfo)? {
        locations[name].map { (files[$0.file], $0.info) }
    }

    /// `model_type` from config.json, if any.
    public var modelType: String? { config?["model_type"] as? String }
}
