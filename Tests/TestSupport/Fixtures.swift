// Fixtures: locating the repository's Fixtures/ directory and scratch directories for tests.
import Foundation

/// The repository's `Fixtures/` directory, found from this source file's path.
public let fixturesDirectory: String = {
    let here = URL(fileURLWithPath: #filePath)  // …/Tests/TestSupport/Fixtures.swift
    return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path
}()

/// A fresh empty directory under the system temporary directory; the caller removes it.
public func makeTemporaryDirectory(_ label: String = "streammerge-test") -> String {
    let path = NSTemporaryDirectory() + "\(label)-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
