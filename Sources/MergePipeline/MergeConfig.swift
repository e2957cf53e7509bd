// MergeConfig: the YAML merge config (mergekit's format for the methods we share), strictly parsed.
import Distillation
import Foundation
import MergeMethods
import ModelArchitectures
import SafetensorsFormat
import Yams

/// A parameter value: one number for every layer, or a list interpolated across layers (a "gradient").
public enum ParameterValue: Equatable, Sendable {
    case scalar(Double)
    case gradient([Double])

    /// The value at relative depth `t` ∈ [0, 1]: linear interpolation between evenly spaced anchors,
    /// as numpy's `interp(t, linspace(0, 1, n), values)` — mergekit's rule.
    public func value(at t: Double) -> Double {
        switch self {
        case let .scalar(v): return v
        case let .gradient(values):
            if values.count == 1 { return values[0] }
            let position = min(max(t, 0), 1) * Double(values.count - 1)
            let lower = min(Int(position.rounded(.down)), values.count - 2)
            let fraction = position - Double(lower)
            return values[lower] + (values[lower + 1] - values[lower]) * fraction
        }
    }
}

/// One input model of the config.
public struct ModelEntry: Sendable {
    public var path: String
    public var parameters: [String: ParameterValue]
    public var calibration: String?
    public var head: String?
}

/// A parsed, validated merge config. Model paths are resolved to absolute paths.
public struct MergeConfig: Sendable {
    /// The method as the config names it (`prodistill`, `ties`, …), for the manifest.
    public var methodName: String
    /// The data-free method of every tensor not trained: the method itself, or task arithmetic at
    /// λ = distill.init for a data-driven method's embeddings and final layers.
    public var method: MergeMethod
    /// Set for data-driven methods.
    public var distill: DistillSettings?
    public var basePath: String?
    public var models: [ModelEntry]
    public var parameters: [String: ParameterValue]
    public var outputDType: DType?
    public var shardSize: Int?
    public var seed: UInt64
    public var tokenizerSource: String?
    /// The config text, for hashing into the manifest.
    public var canonicalText: String
    public var path: String

    static let topLevelKeys: Set<String> = [
        "merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "out_shard_size", "seed",
        "tokenizer_source", "distill", "name",
    ]
    /// mergekit keys we know but do not implement: an error, never silently ignored.
    static let unsupportedMergekitKeys: Set<String> = ["slices", "tokenizer", "chat_template", "modules", "architecture"]
    static let modelKeys: Set<String> = ["model", "parameters", "calibration", "head"]
    static let parameterKeys: Set<String> = ["weight", "density", "lambda", "normalize", "rescale", "rescale_norm", "int8_mask"]
    static let unsupportedParameterKeys: Set<String> = ["epsilon", "gamma", "t", "k", "select_topk", "filter_wise", "min_weight", "max_weight"]

    /// Reads and validates the config at `path`.
    /// - Throws: `MergeError.config` naming the key or value at fault.
    public static func load(path: String) throws -> MergeConfig {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw MergeError.config(path: path, detail: "cannot read the config file")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws -> MergeConfig {
        let loaded: Any?
        do { loaded = try Yams.load(yaml: text) } catch {
            throw MergeError.config(path: path, detail: "not valid YAML: \(error)")
        }
        guard let root = loaded as? [String: Any] else { throw MergeError.config(path: path, detail: "the config must be a YAML mapping") }
        func fail(_ detail: String) -> MergeError { .config(path: path, detail: detail) }

        for key in root.keys.sorted() where !topLevelKeys.contains(key) {
            if unsupportedMergekitKeys.contains(key) { throw fail("mergekit key '\(key)' is not supported by streammerge") }
            throw fail("unknown key '\(key)'")
        }
        guard let methodName = root["merge_method"] as? String else { throw fail("missing 'merge_method'") }
        let known = (MergeMethod.allCases.map(\.rawValue) + ["prodistill", "samerging", "adamerging", "regmean"]).joined(separator: ", ")
        let method: MergeMethod
        var distill: DistillSettings? = nil
        if methodName == "prodistill" {
            method = .taskArithmetic
            distill = try parseDistill(root["distill"], allowed: distillKeys, fail: fail)
        } else if methodName == "regmean" {
            // Tensors outside linear layers (embeddings, norms, biases, final layers): the mean.
            method = .linear
            distill = try parseDistill(root["distill"], allowed: regmeanKeys, fail: fail)
        } else if methodName == "samerging" || methodName == "adamerging" {
            // Every floating-point tensor is trained; task arithmetic at λ = init is only the starting point.
            method = .taskArithmetic
            var settings = try parseDistill(root["distill"], allowed: methodName == "samerging" ? samergingKeys : adamergingKeys, fail: fail)
            // Default Adam learning rates for the default 100 steps, measured on the MiniLM benchmark
            // (README): SAMerging needs 0.01 to move λ far enough (1e-3 ends at task arithmetic's
            // accuracy); AdaMerging's entropy objective collapses tasks at 0.01 and wants 1e-3.
            if (root["distill"] as? [String: Any])?["lr"] == nil { settings.learningRate = methodName == "samerging" ? 1e-2 : 1e-3 }
            settings.initialLambda = settings.initialLambda ?? 0.3
            distill = settings
        } else if let dataFree = MergeMethod(rawValue: methodName) {
            method = dataFree
            if root["distill"] != nil { throw fail("'distill' applies only to data-driven methods, not '\(methodName)'") }
        } else {
            throw fail("unknown merge_method '\(methodName)' (supported: \(known))")
        }

        // Absolute paths keep the manifest's input list usable from any working directory.
        let directory = (URL(fileURLWithPath: path).standardizedFileURL.path as NSString).deletingLastPathComponent
        func resolve(_ modelPath: String) -> String {
            if modelPath.hasPrefix("/") { return modelPath }
            // Relative paths are looked up beside the config first, then (as mergekit does) in the working directory.
            let besideConfig = (directory as NSString).appendingPathComponent(modelPath)
            if FileManager.default.fileExists(atPath: besideConfig) { return (besideConfig as NSString).standardizingPath }
            return ((FileManager.default.currentDirectoryPath as NSString).appendingPathComponent(modelPath) as NSString).standardizingPath
        }

        var parameters = try parseParameters(root["parameters"], context: "parameters", fail: fail)
        guard let modelList = root["models"] as? [Any], !modelList.isEmpty else { throw fail("'models' must be a non-empty list") }
        var models: [ModelEntry] = []
        for (number, item) in modelList.enumerated() {
            let context = "models[\(number)]"
            guard let entry = item as? [String: Any] else { throw fail("\(context) must be a mapping with a 'model' key") }
            for key in entry.keys.sorted() where !modelKeys.contains(key) { throw fail("unknown key '\(key)' in \(context)") }
            guard let modelPath = entry["model"] as? String else { throw fail("\(context) is missing 'model'") }
            models.append(ModelEntry(
                path: resolve(modelPath),
                parameters: try parseParameters(entry["parameters"], context: "\(context).parameters", fail: fail),
                calibration: (entry["calibration"] as? String).map(resolve),
                head: (entry["head"] as? String).map(resolve)))
        }
        if var settings = distill {
            if !parameters.isEmpty || models.contains(where: { !$0.parameters.isEmpty }) {
                throw fail("'parameters' do not apply to \(methodName): it derives the merge from calibration data (see distill)")
            }
            for (number, model) in models.enumerated() where model.calibration == nil {
                throw fail("models[\(number)] (\(model.path)) needs 'calibration': a JSONL file of examples of its task")
            }
            if method == .taskArithmetic {
                // Embeddings and final layers: task arithmetic at the initial coefficient.
                settings.initialLambda = settings.lambda(taskCount: models.count)
                parameters["lambda"] = .scalar(settings.initialLambda!)
            }
            distill = settings
        }
        let basePath = (root["base_model"] as? String).map(resolve)
        if (method != .linear || distill != nil) && basePath == nil { throw fail("merge_method '\(methodName)' needs 'base_model'") }

        var outputDType: DType? = nil
        for key in ["dtype", "out_dtype"] {
            guard let name = root[key] else { continue }
            guard let text = name as? String, let dtype = DType(configName: text) else { throw fail("invalid \(key) '\(name)'") }
            outputDType = dtype  // out_dtype wins when both are given, as in mergekit
        }
        var shardSize: Int? = nil
        if let value = root["out_shard_size"] {
            guard let size = parseByteSize("\(value)") else { throw fail("invalid out_shard_size '\(value)'") }
            shardSize = size
        }
        var seed: UInt64 = 0
        if let value = root["seed"] {
            guard let number = value as? Int, number >= 0 else { throw fail("'seed' must be a non-negative integer") }
            seed = UInt64(number)
        }
        return MergeConfig(
            methodName: methodName, method: method, distill: distill, basePath: basePath, models: models, parameters: parameters, outputDType: outputDType,
            shardSize: shardSize, seed: seed, tokenizerSource: root["tokenizer_source"] as? String,
            canonicalText: text, path: path)
    }

    private static func parseParameters(_ value: Any?, context: String, fail: (String) -> MergeError) throws -> [String: ParameterValue] {
        guard let value else { return [:] }
        guard let mapping = value as? [String: Any] else { throw fail("\(context) must be a mapping") }
        var result: [String: ParameterValue] = [:]
        for (key, raw) in mapping {
            if unsupportedParameterKeys.contains(key) { throw fail("parameter '\(key)' in \(context) is not supported by these methods") }
            guard parameterKeys.contains(key) else { throw fail("unknown parameter '\(key)' in \(context)") }
            if let flag = raw as? Bool {
                result[key] = .scalar(flag ? 1 : 0)
            } else if let number = numeric(raw) {
                result[key] = .scalar(number)
            } else if let list = raw as? [Any], !list.isEmpty {
                let numbers = list.compactMap(numeric)
                guard numbers.count == list.count else {
                    throw fail("parameter '\(key)' in \(context): conditional (filter) parameters are not supported; use a number or a list of numbers")
                }
                result[key] = .gradient(numbers)
            } else if key == "rescale_norm", let text = raw as? String {
                guard let rescale = ["l1": 1.0, "none": 0.0][text] else { throw fail("rescale_norm '\(text)' in \(context): supported are l1 and none") }
                result[key] = .scalar(rescale)
            } else {
                throw fail("parameter '\(key)' in \(context) must be a number, a boolean or a list of numbers")
            }
        }
        return result
    }

    static let distillKeys: Set<String> = [
        "epochs", "lr", "batch_size", "init", "granularity", "activation_dtype", "include_padding", "max_length", "loss",
    ]
    static let regmeanKeys: Set<String> = ["batch_size", "max_length", "alpha", "activation_dtype"]
    static let adamergingKeys: Set<String> = ["steps", "lr", "batch_size", "init", "max_length", "head_pooling", "activation_dtype", "clamp"]
    static let samergingKeys: Set<String> = ["steps", "lr", "batch_size", "init", "max_length", "head_pooling", "activation_dtype", "rho", "temperature"]

    /// The `distill:` block; every key checked against those the method uses, unknown ones named.
    private static func parseDistill(_ value: Any?, allowed: Set<String>, fail: (String) -> MergeError) throws -> DistillSettings {
        var settings = DistillSettings()
        guard let value else { return settings }
        guard let mapping = value as? [String: Any] else { throw fail("'distill' must be a mapping") }
        for key in mapping.keys.sorted() where !allowed.contains(key) {
            throw fail("unknown key '\(key)' in distill (known for this method: \(allowed.sorted().joined(separator: ", ")))")
        }
        if let raw = mapping["alpha"] {
            guard let alpha = numeric(raw), alpha >= 0, alpha <= 1 else { throw fail("distill.alpha must be a number in [0, 1]") }
            settings.alpha = alpha
        }
        func positiveInt(_ key: String) throws -> Int? {
            guard let raw = mapping[key] else { return nil }
            guard !(raw is Bool), let number = raw as? Int, number > 0 else { throw fail("distill.\(key) must be a positive integer") }
            return number
        }
        func choice(_ key: String, _ options: [String]) throws -> String? {
            guard let raw = mapping[key] else { return nil }
            guard let text = raw as? String, options.contains(text) else {
                throw fail("distill.\(key) must be one of \(options.joined(separator: ", "))")
            }
            return text
        }
        settings.epochs = try positiveInt("epochs") ?? settings.epochs
        settings.steps = try positiveInt("steps") ?? settings.steps
        for (key, path) in [("rho", \DistillSettings.rho), ("temperature", \DistillSettings.temperature)] {
            guard let raw = mapping[key] else { continue }
            guard let number = numeric(raw), number > 0 else { throw fail("distill.\(key) must be a positive number") }
            settings[keyPath: path] = number
        }
        if let raw = mapping["clamp"] {
            guard let flag = raw as? Bool else { throw fail("distill.clamp must be true or false") }
            settings.clamp = flag
        }
        if let text = try choice("head_pooling", HeadPooling.allCases.map(\.rawValue)) { settings.headPooling = HeadPooling(rawValue: text) }
        settings.batchSize = try positiveInt("batch_size") ?? settings.batchSize
        settings.maxLength = try positiveInt("max_length") ?? settings.maxLength
        if let raw = mapping["lr"] {
            guard let lr = numeric(raw), lr > 0 else { throw fail("distill.lr must be a positive number") }
            settings.learningRate = lr
        }
        if let raw = mapping["init"] {
            guard let lambda = numeric(raw) else { throw fail("distill.init must be a number") }
            settings.initialLambda = lambda
        }
        if let raw = mapping["include_padding"] {
            guard let flag = raw as? Bool else { throw fail("distill.include_padding must be true or false") }
            settings.includePadding = flag
        }
        if let text = try choice("granularity", ["element", "tensor"]) { settings.granularity = .init(rawValue: text)! }
        if let text = try choice("loss", ["sum", "mean"]) { settings.loss = .init(rawValue: text)! }
        if let text = try choice("activation_dtype", ["float32", "bfloat16"]) { settings.activationDType = .init(rawValue: text)! }
        return settings
    }

    private static func numeric(_ value: Any) -> Double? {
        if value is Bool { return nil }
        if let int = value as? Int { return Double(int) }
        return value as? Double
    }
}

/// Parses sizes such as `5GB`, `500MB`, `1.5G`, `1024` (bytes). Decimal units (GB = 10⁹) as in HF and
/// mergekit; `GiB`/`MiB`/`KiB` are binary.
public func parseByteSize(_ text: String) -> Int? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Double)] = [
        ("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3),
        ("G", 1e9), ("M", 1e6), ("K", 1e3), ("B", 1),
    ]
    for (suffix, scale) in units where trimmed.uppercased().hasSuffix(suffix.uppercased()) && (suffix.count > 1 || trimmed.count > 1) {
        let number = trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
        if let value = Double(number), value > 0 { return Int(value * scale) }
    }
    if let value = Int(trimmed), value > 0 { return value }
    return nil
}
