// MappedFile: a read-only memory mapping of a whole file, with page advice to stream through it.
import Glibc

/// A file mapped read-only. Mapped pages count in RSS once touched, so streaming readers call
/// `release(_:)` on ranges they are done with.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    /// Start of the mapping; nil for an empty file (mmap refuses length 0).
    private let base: UnsafeMutableRawPointer?
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Maps `path` read-only.
    /// - Throws: `SystemError` when the file cannot be opened, measured or mapped.
    public init(path: String) throws(SystemError) {
        self.path = path
        let fd = try Syscalls.open(path, O_RDONLY)
        defer { Syscalls.close(fd) }
        size = try Syscalls.fileSize(fd, path: path)
        base = size == 0 ? nil : try Syscalls.mmap(fd, size, path: path)
    }

    deinit {
        if let base { Syscalls.munmap(base, size) }
    }

    /// The mapped bytes. Valid while `self` is alive; callers keep a reference for as long as they read.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base, count: size)
    }

    /// Drops the resident pages of `range` (`MADV_DONTNEED`). Only whole pages inside the range are
    /// released, so bytes of neighbouring tensors that share an edge page stay mapped.
    public func release(_ range: Range<Int>) {
        advise(range, MADV_DONTNEED, inward: true)
    }

    /// Drops the resident pages of every page `range` touches, including edge pages shared with
    /// neighbours (which fault back in from the page cache if they are read again).
    public func releaseCovering(_ range: Range<Int>) {
        advise(range, MADV_DONTNEED, inward: false)
    }

    /// Drops every resident page of the file. Page faults map neighbouring pages too ("fault-around"),
    /// so pages of tensors already released can come back while later ones are read; an occasional
    /// sweep keeps them from accumulating with depth.
    public func releaseAll() {
        advise(0..<size, MADV_DONTNEED, inward: false)
    }

    private func advise(_ range: Range<Int>, _ advice: Int32, inward: Bool) {
        guard let base, !range.isEmpty else { return }
        let page = Self.pageSize
        let lower = inward ? (range.lowerBound + page - 1) / page * page : range.lowerBound / page * page
        var upper = inward ? range.upperBound / page * page : (range.upperBound + page - 1) / page * page
        if range.upperBound == size { upper = (size + page - 1) / page * page }
        guard upper > lower else { return }
        Syscalls.madvise(base + lower, upper - lower, advice)
    }
}
