// ArchitectureConfig: the config.json fields the BERT and Llama families need, read and checked.
import Foundation
import TensorKernels

/// The two families StreamMerge can run (forward, backward) rather than only merge.
public enum ArchitectureFamily: String, Sendable {
    case bert, llama

    /// config.json `model_type`s each family covers.
    public static let supportedModelTypes: [String: ArchitectureFamily] = [
        "bert": .bert, "roberta": .bert, "llama": .llama, "mistral": .llama, "qwen2": .llama,
    ]
}

/// Shapes and constants of one model, from its config.json.
public struct ArchitectureConfig: Sendable {
    public var modelType: String
    public var family: ArchitectureFamily
    public var hidden: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var intermediate: Int
    public var vocabulary: Int
    public var maxPositions: Int
    /// LayerNorm eps (BERT) or RMSNorm eps (Llama).
    public var normEps: Float
    /// BERT's activation; the Llama family always uses SiLU (checked).
    public var gelu: GELUForm
    /// BERT family: token type vocabulary (RoBERTa: 1).
    public var typeVocabulary: Int
    /// RoBERTa numbers positions from padding_idx + 1, counting only non-padding tokens.
    public var positionsFromPadding: Bool
    public var padTokenID: Int
    public var ropeTheta: Double
    public var ropeScaling: RoPEScaling
    public var tieWordEmbeddings: Bool
    /// Llama family sliding windows are refused rather than silently ignored.
    public var slidingWindow: Int?

    /// Reads `config` (the parsed config.json at `path`). Unknown model types are an error listing
    /// the supported ones; a missing or mistyped field is an error naming it.
    public init(_ config: [String: Any], path: String) throws(ArchitectureError) {
        guard let modelType = config["model_type"] as? String else {
            throw .invalidConfig(path: path, detail: "missing 'model_type'")
        }
        guard let family = ArchitectureFamily.supportedModelTypes[modelType] else {
            throw .unsupported(path: path, modelType: modelType)
        }
        func int(_ key: String) throws(ArchitectureError) -> Int {
            guard let value = config[key] as? Int else { throw .invalidConfig(path: path, detail: "missing or non-integer '\(key)'") }
            return value
        }
        func number(_ key: String, default fallback: Double) throws(ArchitectureError) -> Double {
            guard let raw = config[key] else { return fallback }
            guard let value = raw as? Double else { throw .invalidConfig(path: path, detail: "'\(key)' is not a number") }
            return value
        }
        self.modelType = modelType
        self.family = family
        hidden = try int("hidden_size")
        layers = try int("num_hidden_layers")
        heads = try int("num_attention_heads")
        kvHeads = (config["num_key_value_heads"] as? Int) ?? heads
        headDim = (config["head_dim"] as? Int) ?? hidden / heads
        intermediate = try int("intermediate_size")
        vocabulary = try int("vocab_size")
        maxPositions = (config["max_position_embeddings"] as? Int) ?? 2048
        typeVocabulary = (config["type_vocab_size"] as? Int) ?? 0
        padTokenID = (config["pad_token_id"] as? Int) ?? 0
        positionsFromPadding = modelType == "roberta"
        tieWordEmbeddings = (config["tie_word_embeddings"] as? Bool) ?? (family == .bert)
        slidingWindow = config["sliding_window"] as? Int
        // transformers ≥ 5 writes RoPE settings as `rope_parameters` (theta and type together);
        // earlier versions and most checkpoints use top-level `rope_theta` and `rope_scaling`.
        let ropeParameters = config["rope_parameters"] as? [String: Any]
        if let raw = ropeParameters?["rope_theta"] {
            guard let value = raw as? Double else { throw .invalidConfig(path: path, detail: "rope_parameters.rope_theta is not a number") }
            ropeTheta = value
        } else {
            ropeTheta = try number("rope_theta", default: 10000)
        }
        let activation = (config["hidden_act"] as? String) ?? (family == .bert ? "gelu" : "silu")
        switch (family, activation) {
        case (.bert, "gelu"): gelu = .erf
        case (.bert, "gelu_new"), (.bert, "gelu_pytorch_tanh"): gelu = .tanh
        case (.llama, "silu"): gelu = .erf  // unused by the Llama family
        default: throw .invalidConfig(path: path, detail: "hidden_act '\(activation)' is not supported for \(modelType)")
        }
        switch family {
        case .bert: normEps = Float(try number("layer_norm_eps", default: 1e-12))
        case .llama: normEps = Float(try number("rms_norm_eps", default: 1e-6))
        }
        ropeScaling = .none
        if family == .llama, let scaling = (config["rope_scaling"] as? [String: Any]) ?? ropeParameters {
            let type = (scaling["rope_type"] ?? scaling["type"]) as? String
            switch type {
            case "default": break
            case "llama3":
                func field(_ key: String) throws(ArchitectureError) -> Double {
                    guard let value = scaling[key] as? Double else { throw .invalidConfig(path: path, detail: "rope_scaling: missing '\(key)'") }
                    return value
                }
                ropeScaling = .llama3(
                    factor: try field("factor"), lowFrequencyFactor: try field("low_freq_factor"),
                    highFrequencyFactor: try field("high_freq_factor"),
                    originalMaxPositions: try field("original_max_position_embeddings"))
            default:
                throw .invalidConfig(path: path, detail: "rope_scaling type '\(type ?? "?")' is not supported (default, llama3)")
            }
        }
        guard hidden > 0, layers > 0, heads > 0, kvHeads > 0, heads % kvHeads == 0, headDim % 2 == 0 || family == .bert else {
            throw .invalidConfig(path: path, detail: "inconsistent sizes: hidden \(hidden), heads \(heads), key/value heads \(kvHeads), head_dim \(headDim)")
        }
    }
}

/// Errors of the architecture layer; each names the file (and tensor) at fault.
public enum ArchitectureError: Error, CustomStringConvertible, Equatable {
    case unsupported(path: String, modelType: String)
    case invalidConfig(path: String, detail: String)
    case missingTensor(path: String, tensor: String)
    case badShape(path: String, tensor: String, expected: [Int], actual: [Int])
    case badInput(path: String, detail: String)

    public var description: String {
        switch self {
        case let .unsupported(path, modelType):
            "\(path): model_type '\(modelType)' is not supported; supported: \(ArchitectureFamily.supportedModelTypes.keys.sorted().joined(separator: ", "))"
        case let .invalidConfig(path, detail): "\(path): \(detail)"
        case let .missingTensor(path, tensor): "\(path): tensor '\(tensor)' is missing"
        case let .badShape(path, tensor, expected, actual): "\(path): tensor '\(tensor)' has shape \(actual), expected \(expected)"
        case let .badInput(path, detail): "\(path): \(detail)"
        }
    }
}
