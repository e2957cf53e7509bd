// OutputFile: a file written sequentially under a temporary name and renamed into place when complete.
import Glibc

/// A file being written. Bytes go to `<path>.partial`; `commit()` fsyncs and renames it to `path`, so
/// a file under its final name is always complete. A crashed run leaves only `.partial` files behind,
/// which `open(resumingAt:)` can continue. Every byte `write` took is in the file (in the page cache at
/// least), so a killed process loses none of them.
///
/// Written `syncingBehind`, a background thread makes the bytes durable every few MiB and drops them
/// from the page cache (see `BackgroundSync`).
public final class OutputFile {
    public let path: String
    public let temporaryPath: String
    private var fd: Int32
    private let sync: BackgroundSync?
    public private(set) var position: Int
    /// Bytes between background syncs (see `BackgroundSync` for the measurements behind it).
    public static let defaultSyncInterval = 32 << 20

    /// Creates (truncating) `path + ".partial"`; `syncingBehind` every `syncInterval` bytes.
    public init(path: String, syncingBehind: Bool = false, syncInterval: Int = OutputFile.defaultSyncInterval) throws(SystemError) {
        self.path = path
        temporaryPath = path + ".partial"
        fd = try Syscalls.open(temporaryPath, O_RDWR | O_CREAT | O_TRUNC)
        position = 0
        sync = syncingBehind ? BackgroundSync(fd: fd, path: temporaryPath, from: 0, interval: syncInterval) : nil
    }

    /// Reopens an existing `.partial` file, truncated to `offset` bytes, to continue writing after a crash.
    public init(path: String, resumingAt offset: Int, syncingBehind: Bool = false,
                syncInterval: Int = OutputFile.defaultSyncInterval) throws(SystemError) {
        self.path = path
        temporaryPath = path + ".partial"
        fd = try Syscalls.open(temporaryPath, O_RDWR)
        try Syscalls.ftruncate(fd, offset, path: temporaryPath)
        try Syscalls.lseek(fd, offset, path: temporaryPath)
        position = offset
        sync = syncingBehind ? BackgroundSync(fd: fd, path: temporaryPath, from: offset, interval: syncInterval) : nil
    }

    deinit {
        guard fd >= 0 else { return }
        // A sync still running uses the descriptor; its error no longer matters to anyone.
        try? sync?.finish()
        Syscalls.close(fd)
    }

    /// Writes all of `bytes`; throws a failed background sync's error too.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        guard var next = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let written = try Syscalls.write(fd, next, remaining, path: temporaryPath)
            next += written
            remaining -= written
        }
        position += bytes.count
        try sync?.wrote(upTo: position)
    }

    /// Fsyncs, closes and renames the file to its final name, then fsyncs the directory so the rename
    /// survives a crash. Without `durable` it only closes and renames: the file is complete under its
    /// final name or absent, but a power loss may take it back to an earlier version.
    public func commit(durable: Bool = true) throws(SystemError) {
        try sync?.finish()
        if durable { try Syscalls.fsync(fd, path: temporaryPath) }
        if durable && sync != nil { Syscalls.dropCached(fd, 0..<position) }
        Syscalls.close(fd)
        fd = -1
        try Syscalls.rename(temporaryPath, path)
        if durable { try syncDirectory(of: path) }
    }
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename, directory fsync (the
/// fsyncs only when `durable`; see `OutputFile.commit`).
public func writeFileAtomically(_ path: String, _ bytes: [UInt8], durable: Bool = true) throws(SystemError) {
    let file = try OutputFile(path: path)
    var result: Result<Void, SystemError> = .success(())
    bytes.withUnsafeBytes { raw in
        do throws(SystemError) { try file.write(raw) } catch { result = .failure(error) }
    }
    try result.get()
    try file.commit(durable: durable)
}

/// Fsyncs the directory holding `path`, making a rename inside it durable.
public func syncDirectory(of path: String) throws(SystemError) {
    let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
    let fd = try Syscalls.open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY)
    defer { Syscalls.close(fd) }
    try Syscalls.fsync(fd, path: directory)
}

/// Peak resident set size of this process so far, in bytes (`getrusage`'s `ru_maxrss`).
public func peakResidentBytes() -> Int { Syscalls.peakResidentBytes() }
