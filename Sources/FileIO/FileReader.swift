// FileReader: sequential reads through a small buffer, for hashing inputs without mapping them.
import Glibc

/// Reads a whole file in fixed-size pieces with `pread`. Unlike a mapping, the pieces do not stay
/// resident, so hashing a large input costs one buffer of memory.
public enum FileReader {
    /// Calls `body` with consecutive pieces of the file at `path`, in order.
    /// - Returns: the number of bytes read.
    @discardableResult
    public static func forEachPiece(
        of path: String, pieceSize: Int = 8 << 20, _ body: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> Int {
        let fd = try Syscalls.open(path, O_RDONLY)
        defer { Syscalls.close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: pieceSize, alignment: 64)
        defer { buffer.deallocate() }
        var offset = 0
        while true {
            let count = try Syscalls.pread(fd, buffer, pieceSize, offset, path: path)
            if count == 0 { return offset }
            try body(UnsafeRawBufferPointer(start: buffer, count: count))
            offset += count
        }
    }
}
