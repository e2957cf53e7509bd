// Syscalls: every libc file-system call StreamMerge makes, retried on EINTR and turned into SystemError.
import Glibc

/// Runs `body` until it stops failing with EINTR; a -1 result becomes a `SystemError`.
@inline(__always)
func retrying<T: BinaryInteger>(_ call: String, _ path: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code == EINTR { continue }
        throw SystemError(call: call, path: path, errno: code)
    }
}

enum Syscalls {
    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) throws(SystemError) -> Int32 {
        try retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
    }

    static func close(_ fd: Int32) {
        // close must not be retried on EINTR on Linux: the descriptor is already gone.
        _ = Glibc.close(fd)
    }

    static func fileSize(_ fd: Int32, path: String) throws(SystemError) -> Int {
        var st = stat()
        _ = try retrying("fstat", path) { fstat(fd, &st) }
        return Int(st.st_size)
    }

    static func pread(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int,
                      path: String) throws(SystemError) -> Int {
        try retrying("pread", path) { Glibc.pread(fd, buffer, count, off_t(offset)) }
    }

    static func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, path: String) throws(SystemError) -> Int {
        try retrying("write", path) { Glibc.write(fd, buffer, count) }
    }

    /// Reads exactly `count` bytes at `offset`, looping over short reads; false if the file ends first.
    static func preadFully(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int, _ offset: Int,
                           path: String) throws(SystemError) -> Bool {
        var done = 0
        while done < count {
            let got = try pread(fd, buffer + done, count - done, offset + done, path: path)
            if got == 0 { return false }
            done += got
        }
        return true
    }

    static func pwrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int,
                       path: String) throws(SystemError) -> Int {
        try retrying("pwrite", path) { Glibc.pwrite(fd, buffer, count, off_t(offset)) }
    }

    static func fsync(_ fd: Int32, path: String) throws(SystemError) {
        _ = try retrying("fsync", path) { Glibc.fsync(fd) }
    }

    static func fdatasync(_ fd: Int32, path: String) throws(SystemError) {
        _ = try retrying("fdatasync", path) { Glibc.fdatasync(fd) }
    }

    /// Drops the clean cached pages of `range` (whole pages inside it), which we will not read again.
    /// A hint: failure is ignored.
    static func dropCached(_ fd: Int32, _ range: Range<Int>) {
        _ = Glibc.posix_fadvise(fd, off_t(range.lowerBound), off_t(range.count), POSIX_FADV_DONTNEED)
    }

    static func ftruncate(_ fd: Int32, _ size: Int, path: String) throws(SystemError) {
        _ = try retrying("ftruncate", path) { Glibc.ftruncate(fd, off_t(size)) }
    }

    static func lseek(_ fd: Int32, _ offset: Int, path: String) throws(SystemError) {
        _ = try retrying("lseek", path) { Glibc.lseek(fd, off_t(offset), SEEK_SET) }
    }

    static func rename(_ from: String, _ to: String) throws(SystemError) {
        _ = try retrying("rename", to) { Glibc.rename(from, to) }
    }

    static func unlink(_ path: String) throws(SystemError) {
        _ = try retrying("unlink", path) { Glibc.unlink(path) }
    }

    static func mmap(_ fd: Int32, _ size: Int, path: String) throws(SystemError) -> UnsafeMutableRawPointer {
        guard let base = Glibc.mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw SystemError(call: "mmap", path: path, errno: errno)
        }
        return base
    }

    static func munmap(_ base: UnsafeMutableRawPointer, _ size: Int) {
        _ = Glibc.munmap(base, size)
    }

    /// Advice is a hint: a failure is ignored because the merge is correct without it.
    static func madvise(_ base: UnsafeMutableRawPointer, _ size: Int, _ advice: Int32) {
        _ = Glibc.madvise(base, size, advice)
    }

    static func peakResidentBytes() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024  // ru_maxrss is in KiB on Linux
    }
}
