// ForwardCommand: `streammerge forward MODEL --input FILE.jsonl --out FILE.safetensors` — streamed inference.
import ArgumentParser
import MergePipeline

extension StreamMerge {
    struct Forward: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a model layer by layer over tokenized examples and write its hidden states.")

        @Argument(help: "A model directory (config.json + safetensors).") var model: String
        @Option(name: .long, help: "Examples as JSONL: {\"input_ids\": [...], \"attention_mask\": [...], \"token_type_ids\": [...]}.")
        var input: String
        @Option(name: .long, help: "The safetensors file to write.") var out: String
        @Flag(name: .long, help: "Also write hidden_state_0 (embeddings) … hidden_state_L, as transformers' hidden_states.")
        var layers = false
        @Option(name: .long, help: "A head file (weight [C, H], bias [C]): adds logits.") var head: String?
        @Option(name: .long, help: "Examples per block call.") var batchSize = 8
        @Option(name: .long, help: "Threads for matrix products.") var threads = 2
        @Flag(name: .long, help: "Print a JSON summary.") var json = false

        func run() throws {
            var options = ForwardOptions(model: model, input: input, output: out)
            options.allLayers = layers
            options.head = head
            options.batchSize = max(1, batchSize)
            options.threads = threads
            let summary = try reportingErrors { try runForward(options) }
            if json { return try printJSON(summary) }
            print("\(out): \(summary.tensors.joined(separator: ", ")) for \(summary.examples) examples × \(summary.sequence_length) tokens "
                  + "through \(summary.blocks) \(summary.model_type) blocks in \(String(format: "%.2f", summary.seconds)) s, "
                  + "peak RSS \(formatBytes(summary.peak_rss_bytes))")
        }
    }
}
