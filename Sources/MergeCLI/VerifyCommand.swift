// VerifyCommand: `streammerge verify DIR [--inputs]`.
import ArgumentParser
import MergePipeline

extension StreamMerge {
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Re-hash a merge output against its manifest.")

        @Argument(help: "The output directory of a merge.") var directory: String
        @Flag(name: .long, help: "Also re-hash the input files the manifest lists.") var inputs = false
        @Flag(name: .long, help: "Print JSON.") var json = false

        struct Summary: Encodable { var ok: Bool; var files: Int; var tensors: Int; var inputs: Int }

        func run() throws {
            let report = try reportingErrors { try verifyOutput(directory: directory, inputs: inputs) }
            if json { return try printJSON(Summary(ok: true, files: report.files, tensors: report.tensors, inputs: report.inputs)) }
            print("ok: \(report.files) files, \(report.tensors) tensors" + (inputs ? ", \(report.inputs) inputs" : "") + " match the manifest")
        }
    }
}
