// TensorNaming: architecture prefixes stripped for matching across models, and which layer a tensor belongs to.

/// The streaming unit: embeddings first, then each block, then the final layers (norm, pooler, lm_head).
public enum LayerKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    case embeddings
    case block(Int)
    case final

    public var description: String {
        switch self {
        case .embeddings: "embeddings"
        case let .block(i): "block \(i)"
        case .final: "final"
        }
    }

    private var order: Int {
        switch self {
        case .embeddings: -1
        case let .block(i): i
        case .final: Int.max
        }
    }

    public static func < (a: LayerKey, b: LayerKey) -> Bool { a.order < b.order }
}

/// How one architecture family names its tensors.
public struct TensorNaming: Sendable {
    /// Prefixes a task-specific model class adds (`bert.` in BertForSequenceClassification,
    /// `model.` in LlamaForCausalLM); stripped before names are compared across models.
    public let prefixes: [String]

    /// The prefixes for a config.json `model_type`; unknown types match names exactly.
    public init(modelType: String?) {
        switch modelType {
        case "bert": prefixes = ["bert."]
        case "roberta": prefixes = ["roberta."]
        case "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3": prefixes = ["model."]
        default: prefixes = []
        }
    }

    public func canonical(_ name: String) -> String {
        for prefix in prefixes where name.hasPrefix(prefix) { return String(name.dropFirst(prefix.count)) }
        return name
    }

    /// The layer of a canonical name: `….layers.N.…` / `layer.N` / `h.N` / `blocks.N` is block N;
    /// embedding tables come first; everything else (final norm, pooler, lm_head) last.
    public func layer(of canonicalName: String) -> LayerKey {
        let parts = canonicalName.split(separator: ".")
        for (i, part) in parts.enumerated() where i + 1 < parts.count && ["layers", "layer", "h", "blocks"].contains(part) {
            if let index = Int(parts[i + 1]) { return .block(index) }
        }
        if canonicalName.contains("embed") || parts.first == "wte" || parts.first == "wpe" { return .embeddings }
        return .final
    }
}

extension TensorNaming {
    /// A canonical name's name inside its layer: for a block, what follows the block index
    /// (`encoder.layer.3.output.dense.weight` → `output.dense.weight`); otherwise the canonical name.
    public func localName(of canonicalName: String, in layer: LayerKey) -> String {
        guard case let .block(index) = layer else { return canonicalName }
        let parts = canonicalName.split(separator: ".", omittingEmptySubsequences: false)
        for i in 0..<(parts.count - 1) where ["layers", "layer", "h", "blocks"].contains(parts[i]) && parts[i + 1] == "\(index)" {
            return parts[(i + 2)...].joined(separator: ".")
        }
        return canonicalName
    }
}
