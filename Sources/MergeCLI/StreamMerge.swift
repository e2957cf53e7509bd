// StreamMerge: the `streammerge` command — parsing and printing only; the work lives in MergePipeline.
import ArgumentParser
import Distillation
import FileIO
import Foundation
import MergePipeline
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

@main
struct StreamMerge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "streammerge",
        abstract: "Merge fine-tuned checkpoints of one base model, streaming one layer at a time.",
        version: toolVersion,
        subcommands: [Merge.self, Plan.self, Verify.self, Inspect.self, Forward.self])

    static func main() {
        relaunchWithNativeBLASKernelsIfNeeded()
        keepFreedTensorMemoryForReuse()
        main(nil)
    }
}

/// Runs `body`, printing any error to stderr and exiting with 2 for invalid input, 1 for failures.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as MergeError {
        printError(error.description)
        throw ExitCode(error.exitCode)
    } catch let error as SafetensorsError {
        printError(error.description)
        throw ExitCode(2)
    } catch let error as ActivationCacheError {
        printError(error.description)
        throw ExitCode(1)
    } catch let error as ArchitectureError {
        printError(error.description)
        throw ExitCode(2)
    } catch let error as SystemError {
        printError(error.description)
        throw ExitCode(1)
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
}

func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes), unit = 0
    while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// Progress on stderr, only when it is a terminal.
let stderrIsTerminal = isatty(2) != 0
