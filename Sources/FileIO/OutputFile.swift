// OutputFile: a file written sequentially under a temporary name and renamed into place when complete.
import Glibc

/// A file being written. Bytes go to `<path>.partial`; `commit()` fsyncs and renames it to `path`, so
/// a file under its final name is always complete. A crashed run leaves only `.partial` files behind,
/// which `open(resumingAt:)` can continue.
///
/// Written `bypassingCache`, the bytes go to the device with `O_DIRECT` (see `DirectWrites`) where
/// the file system allows it; `flush()` then puts staged bytes into the file.
public final class OutputFile {
    public let path: String
    public let temporaryPath: String
    private var fd: Int32
    private let direct: DirectWrites?
    public private(set) var position: Int
    /// Bytes before this offset have been handed to writeback.
    private var writebackStart = 0

    /// Creates (truncating) `path + ".partial"`.
    public init(path: String, bypassingCache: Bool = false) throws(SystemError) {
        self.path = path
        temporaryPath = path + ".partial"
        fd = try Syscalls.open(temporaryPath, O_RDWR | O_CREAT | O_TRUNC)
        position = 0
        direct = bypassingCache ? try DirectWrites(path: temporaryPath, at: 0, buffered: fd) : nil
    }

    /// Reopens an existing `.partial` file, truncated to `offset` bytes, to continue writing after a crash.
    public init(path: String, resumingAt offset: Int, bypassingCache: Bool = false) throws(SystemError) {
        self.path = path
        temporaryPath = path + ".partial"
        fd = try Syscalls.open(temporaryPath, O_RDWR)
        try Syscalls.ftruncate(fd, offset, path: temporaryPath)
        try Syscalls.lseek(fd, offset, path: temporaryPath)
        position = offset
        writebackStart = offset
        direct = bypassingCache ? try DirectWrites(path: temporaryPath, at: offset, buffered: fd) : nil
    }

    deinit {
        if fd >= 0 { Syscalls.close(fd) }
    }

    /// Memory a file written `bypassingCache` holds for staging, for estimates.
    public static let directStagingBytes = DirectWrites.stagingSize

    /// Whether bytes go to the device directly (`bypassingCache` was asked for and the file system and
    /// device allow it).
    public var isDirect: Bool { direct?.isDirect ?? false }

    /// Writes all of `bytes` (direct: stages them, writing whole staging buffers).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        if let direct {
            try direct.write(bytes)
            position += bytes.count
            return
        }
        guard var next = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            let written = try Syscalls.write(fd, next, remaining, path: temporaryPath)
            next += written
            remaining -= written
        }
        position += bytes.count
    }

    /// Makes every byte written so far part of the file (a killed process loses none of them), and
    /// starts writing cached ones to disk without waiting, so that the final fsync finds little left
    /// to do instead of the whole file.
    public func flush() throws(SystemError) {
        if let direct { try direct.flush() }
        guard position > writebackStart else { return }
        Syscalls.startWriteback(fd, writebackStart, position - writebackStart)
        writebackStart = position
    }

    /// Fsyncs, closes and renames the file to its final name, then fsyncs the directory so the rename
    /// survives a crash. Without `durable` it only closes and renames: the file is complete under its
    /// final name or absent, but a power loss may take it back to an earlier version.
    public func commit(durable: Bool = true) throws(SystemError) {
        try direct?.flush()
        if durable { try Syscalls.fsync(fd, path: temporaryPath) }
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
