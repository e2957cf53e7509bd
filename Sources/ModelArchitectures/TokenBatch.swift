// TokenBatch: tokenized examples (ids, attention mask, token types) as blocks consume them, read from calibration JSONL.
import Foundation

/// B examples of S tokens each, row-major [B, S]. Shorter examples are right-padded with id
/// `padID` and mask 0.
public struct TokenBatch: Sendable {
    public let B: Int
    public let S: Int
    public var inputIDs: [Int32]
    public var attentionMask: [Int32]
    public var tokenTypeIDs: [Int32]

    public var rows: Int { B * S }

    /// Pads `examples` to the longest one (at most `maxLength` tokens; longer ones are cut).
    public init(_ examples: [TokenizedExample], padID: Int32, maxLength: Int = .max) {
        B = examples.count
        S = min(maxLength, examples.map(\.inputIDs.count).max() ?? 0)
        inputIDs = [Int32](repeating: padID, count: B * S)
        attentionMask = [Int32](repeating: 0, count: B * S)
        tokenTypeIDs = [Int32](repeating: 0, count: B * S)
        for (b, example) in examples.enumerated() {
            for s in 0..<min(S, example.inputIDs.count) {
                inputIDs[b * S + s] = example.inputIDs[s]
                attentionMask[b * S + s] = example.attentionMask[s]
                tokenTypeIDs[b * S + s] = example.tokenTypeIDs[s]
            }
        }
    }
}

/// One calibration example: `{"input_ids": [...], "attention_mask": [...], "token_type_ids": [...]}`,
/// mask and token types optional (all ones and all zeros).
public struct TokenizedExample: Sendable, Equatable {
    public var inputIDs: [Int32]
    public var attentionMask: [Int32]
    public var tokenTypeIDs: [Int32]

    public init(inputIDs: [Int32], attentionMask: [Int32]? = nil, tokenTypeIDs: [Int32]? = nil) {
        self.inputIDs = inputIDs
        self.attentionMask = attentionMask ?? [Int32](repeating: 1, count: inputIDs.count)
        self.tokenTypeIDs = tokenTypeIDs ?? [Int32](repeating: 0, count: inputIDs.count)
    }

    /// Reads a JSONL file, one example per non-empty line. Errors name the file and line.
    public static func readJSONL(_ path: String) throws(ArchitectureError) -> [TokenizedExample] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .badInput(path: path, detail: "cannot read the file")
        }
        var examples: [TokenizedExample] = []
        for (number, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            let location = "\(path):\(number + 1)"
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
                throw .badInput(path: location, detail: "not a JSON object")
            }
            if object["text"] != nil, object["input_ids"] == nil {
                throw .badInput(path: location, detail: "raw 'text' needs a tokenizer; give 'input_ids' (see tools/make_minilm_inputs.py)")
            }
            for key in object.keys where !["input_ids", "attention_mask", "token_type_ids"].contains(key) {
                throw .badInput(path: location, detail: "unknown key '\(key)'")
            }
            func integers(_ key: String) throws(ArchitectureError) -> [Int32]? {
                guard let raw = object[key] else { return nil }
                guard let values = raw as? [Int], values.allSatisfy({ $0 >= 0 && $0 <= Int(Int32.max) }) else {
                    throw .badInput(path: location, detail: "'\(key)' is not a list of non-negative integers")
                }
                return values.map(Int32.init)
            }
            guard let ids = try integers("input_ids"), !ids.isEmpty else {
                throw .badInput(path: location, detail: "missing or empty 'input_ids'")
            }
            let mask = try integers("attention_mask"), types = try integers("token_type_ids")
            if let mask, mask.count != ids.count || mask.contains(where: { $0 > 1 }) {
                throw .badInput(path: location, detail: "'attention_mask' must be 0/1 values, one per input id")
            }
            if let types, types.count != ids.count {
                throw .badInput(path: location, detail: "'token_type_ids' must have one entry per input id")
            }
            examples.append(TokenizedExample(inputIDs: ids, attentionMask: mask, tokenTypeIDs: types))
        }
        guard !examples.isEmpty else { throw .badInput(path: path, detail: "no examples") }
        return examples
    }
}

extension TokenBatch {
    /// Examples `range` of this batch, keeping its sequence length.
    public func slice(_ range: Range<Int>) -> TokenBatch {
        TokenBatch(B: range.count, S: S, inputIDs: Array(inputIDs[range.lowerBound * S..<range.upperBound * S]),
                   attentionMask: Array(attentionMask[range.lowerBound * S..<range.upperBound * S]),
                   tokenTypeIDs: Array(tokenTypeIDs[range.lowerBound * S..<range.upperBound * S]))
    }

    private init(B: Int, S: Int, inputIDs: [Int32], attentionMask: [Int32], tokenTypeIDs: [Int32]) {
        self.B = B; self.S = S; self.inputIDs = inputIDs; self.attentionMask = attentionMask; self.tokenTypeIDs = tokenTypeIDs
    }
}
