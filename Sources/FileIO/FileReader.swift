// FileReader: sequential reads through a small buffer, for hashing files without mapping them.
import Glibc

/// Reads a whole file in fixed-size pieces with `pread`. Unlike a mapping, the pieces do not stay
/// resident, so hashing a large file costs one buffer of memory.
public enum FileReader {
    /// Calls `body` with consecutive pieces of the file at `path`, in order, read into a 1 MiB buffer.
    /// - Returns: the number of bytes read.
    @discardableResult
    public static func forEachPiece(of path: String, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        let fd = try Syscalls.open(path, O_RDONLY)
        defer { Syscalls.close(fd) }
        var offset = 0
        while true {
            let count = try Syscalls.pread(fd, buffer.baseAddress!, buffer.count, offset, path: path)
            if count == 0 { return offset }
            try body(UnsafeRawBufferPointer(start: buffer.baseAddress, count: count))
            offset += count
        }
    }
}

/// An open file read at explicit offsets (`pread`), for formats read piece by piece out of order.
public final class PositionalReader {
    public let path: String
    public let size: Int
    private let fd: Int32

    public init(path: String) throws(SystemError) {
        self.path = path
        fd = try Syscalls.open(path, O_RDONLY)
        do { size = try Syscalls.fileSize(fd, path: path) } catch {
            Syscalls.close(fd)
            throw error
        }
    }

    deinit { Syscalls.close(fd) }

    /// Reads exactly `count` bytes at `offset` into `buffer`; false if the file ends first.
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: Int) throws(SystemError) -> Bool {
        try Syscalls.preadFully(fd, buffer, count, offset, path: path)
    }
}
