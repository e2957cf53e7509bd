// swift-tools-version:6.0
// StreamMerge: merge fine-tuned checkpoints of one base model, streaming one layer at a time.
import PackageDescription

let optimize: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked", "-target-cpu", "native"], .when(configuration: .release))
]

let package = Package(
    name: "StreamMerge",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "streammerge", targets: ["MergeCLI"]),
        .executable(name: "streammerge-bench", targets: ["StreamMergeBench"]),
        .library(name: "MergePipeline", targets: ["MergePipeline"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // C libraries, each wrapped by exactly one Swift file.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),

        // Software prefetch, which Swift cannot express.
        .target(name: "CacheHints"),
        .target(name: "FileIO", swiftSettings: optimize),
        .target(name: "Checksum", dependencies: ["CXXHash"], swiftSettings: optimize),
        .target(name: "SafetensorsFormat", dependencies: ["CacheHints", "FileIO", "Checksum"], swiftSettings: optimize),
        .target(name: "TensorKernels", dependencies: ["CBLAS"], swiftSettings: optimize),
        .target(name: "ModelArchitectures", dependencies: ["TensorKernels", "SafetensorsFormat"], swiftSettings: optimize),
        .target(name: "MergeMethods", dependencies: ["Checksum"], swiftSettings: optimize),
        .target(
            name: "Distillation",
            dependencies: ["CLZ4", "FileIO", "Checksum", "SafetensorsFormat", "TensorKernels", "ModelArchitectures", "MergeMethods"],
            swiftSettings: optimize),
        .target(
            name: "MergePipeline",
            dependencies: ["FileIO", "Checksum", "SafetensorsFormat", "ModelArchitectures", "MergeMethods", "Distillation", "Yams"],
            swiftSettings: optimize),
        .executableTarget(
            name: "MergeCLI",
            dependencies: ["MergePipeline", "ModelArchitectures", "Distillation", "TensorKernels", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: optimize),
        .executableTarget(
            name: "StreamMergeBench",
            dependencies: ["MergePipeline", "ModelArchitectures", "Distillation", "TensorKernels",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/StreamMergeBench", swiftSettings: optimize),

        .target(name: "TestSupport", dependencies: ["SafetensorsFormat"], path: "Tests/TestSupport"),
        .testTarget(name: "FileIOTests", dependencies: ["FileIO"]),
        .testTarget(name: "SafetensorsFormatTests", dependencies: ["SafetensorsFormat", "TestSupport"]),
        .testTarget(name: "TensorKernelsTests", dependencies: ["TensorKernels", "TestSupport"]),
        .testTarget(name: "ModelArchitecturesTests", dependencies: ["ModelArchitectures", "TestSupport"]),
        .testTarget(name: "DistillationTests", dependencies: ["Distillation", "TestSupport"]),
        .testTarget(name: "MergeMethodsTests", dependencies: ["MergeMethods", "TestSupport"]),
        .testTarget(name: "MergePipelineTests", dependencies: ["MergePipeline", "MergeCLI", "TestSupport"]),
    ],
    // Swift 5 mode: the merge loops share raw buffers across worker threads by construction
    // (disjoint chunks), which Swift 6's checker cannot see.
    swiftLanguageModes: [.v5]
)
