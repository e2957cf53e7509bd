// MergeError: invalid configs, incompatible checkpoints and refused outputs, each naming what is wrong.

/// An error in what the user asked for or gave us. The CLI maps these to exit status 2
/// (invalid input) or 1 (a run or verification failed) via `exitCode`.
public enum MergeError: Error, CustomStringConvertible {
    case config(path: String, detail: String)
    case incompatible(path: String, tensor: String, detail: String)
    case missingTensor(model: String, tensor: String, base: String)
    case outputNotEmpty(path: String)
    case resume(path: String, detail: String)
    case verification(path: String, detail: String)
    case io(path: String, detail: String)

    public var description: String {
        switch self {
        case let .config(path, detail): "\(path): \(detail)"
        case let .incompatible(path, tensor, detail): "\(path): tensor '\(tensor)': \(detail)"
        case let .missingTensor(model, tensor, base):
            "\(model): tensor '\(tensor)' of the base model (\(base)) is missing from this model"
        case let .outputNotEmpty(path): "\(path): output directory is not empty (use --force to overwrite, or --resume to continue)"
        case let .resume(path, detail): "\(path): cannot resume: \(detail)"
        case let .verification(path, detail): "\(path): verification failed: \(detail)"
        case let .io(path, detail): "\(path): \(detail)"
        }
    }

    /// 1 for failed runs and verifications, 2 for invalid input.
    public var exitCode: Int32 {
        switch self {
        case .verification, .io: 1
        default: 2
        }
    }
}
