// InspectCommand: `streammerge inspect PATH` — tensors, dtypes, shapes, bytes and layer groups.
import ArgumentParser
import MergePipeline

extension StreamMerge {
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the tensors and layers of a model or safetensors file.")

        @Argument(help: "A model directory or a .safetensors file.") var path: String
        @Flag(name: .long, help: "Print JSON.") var json = false

        func run() throws {
            let report = try reportingErrors { try inspectModel(path: path) }
            if json { return try printJSON(report) }
            print("\(report.path): \(report.model_type ?? "unknown model_type"), \(report.files.count) file(s), "
                  + "\(report.tensors.count) tensors, \(report.parameters) parameters, \(formatBytes(report.total_bytes))")
            if let a = report.architecture {
                print("  architecture: \(a.family) family, \(a.blocks) blocks, hidden \(a.hidden), \(a.heads) heads "
                      + "(\(a.kv_heads) key/value, head_dim \(a.head_dim)), intermediate \(a.intermediate), vocabulary \(a.vocabulary)")
            } else if let note = report.architecture_note {
                print("  architecture: not runnable (merging still works): \(note)")
            }
            for layer in report.layers { print("  \(layer.layer): \(layer.tensors) tensors, \(formatBytes(layer.bytes))") }
            for tensor in report.tensors { print("    \(tensor.name)  \(tensor.dtype) \(tensor.shape)  [\(tensor.layer)]") }
        }
    }
}
