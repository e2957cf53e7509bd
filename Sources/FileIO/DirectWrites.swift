// DirectWrites: a file's bytes gathered in an aligned buffer and written with O_DIRECT, bypassing the page cache.
import Glibc

/// Writes an output file with `O_DIRECT`: the device reads the bytes straight from an aligned staging
/// buffer, and they never enter the page cache. Through the cache, every 4 KiB written costs a page
/// allocation, a kernel copy, delayed-allocation and dirty-page bookkeeping and a flusher thread's
/// writeback: on a data-free merge the largest cost after reading the inputs (a third of a task
/// arithmetic merge's wall time, measured), and a model larger than RAM filled memory with dirty pages.
///
/// Only whole aligned blocks go direct. When the caller needs every byte in the file (`flush`), the
/// unaligned tail is written through the cache as well and stays staged; once its block fills, the
/// block is rewritten direct (the kernel writes back and drops the cached copy first). If the device
/// refuses a direct write for its alignment, the rest of the file goes through the cache.
final class DirectWrites {
    /// Offset, length and memory alignment that satisfies `O_DIRECT` on Linux block devices of up to
    /// 4 KiB logical blocks.
    static let defaultAlignment = 4096
    /// Bytes per direct write: large enough for the device to stream, small enough to stay in cache
    /// while it is filled.
    static let stagingSize = 4 << 20

    private let path: String
    private let fd: Int32
    /// The same file without `O_DIRECT`.
    private let buffered: Int32
    let alignment: Int
    /// False once the device refused a direct write: everything then goes through `buffered`.
    private(set) var isDirect = true
    private let staging: UnsafeMutableRawPointer
    /// File offset of `staging[0]` (aligned), and how many bytes are staged.
    private var stagedStart: Int
    private var staged: Int

    /// Opens `path` for direct writes continuing at `offset`, staging the bytes of the partial block
    /// before it (read through `buffered`, a descriptor of the file open for reading and writing).
    /// Nil when the file system does not support `O_DIRECT` (the caller then writes through the cache).
    init?(path: String, at offset: Int, buffered: Int32, alignment: Int = DirectWrites.defaultAlignment) throws(SystemError) {
        do throws(SystemError) {
            fd = try Syscalls.open(path, O_WRONLY | O_DIRECT)
        } catch where error.errno == EINVAL {
            return nil
        }
        self.path = path
        self.buffered = buffered
        self.alignment = alignment
        // On 2 MiB pages (transparent huge pages, where enabled) the buffer is physically contiguous, so
        // a write becomes a few large block requests instead of one per 254 scattered 4 KiB pages: fewer
        // device interrupts and block-layer work items preempting the merge (TA 1.76 -> 1.52 s).
        staging = .allocate(byteCount: Self.stagingSize, alignment: 2 << 20)
        Syscalls.madvise(staging, Self.stagingSize, MADV_HUGEPAGE)
        stagedStart = offset / alignment * alignment
        staged = offset - stagedStart
        // A failure here releases the buffer and descriptor in `deinit`: the object is fully initialised.
        guard try Syscalls.preadFully(buffered, staging, staged, stagedStart, path: path) else {
            throw SystemError(call: "pread", path: path, errno: EIO)
        }
    }

    deinit {
        staging.deallocate()
        Syscalls.close(fd)
    }

    /// Stages all of `bytes`, writing each full staging buffer direct.
    func write(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        var next = 0
        while next < bytes.count {
            let count = min(Self.stagingSize - staged, bytes.count - next)
            (staging + staged).copyMemory(from: bytes.baseAddress! + next, byteCount: count)
            staged += count
            next += count
            if staged == Self.stagingSize {
                try writeDirect(Self.stagingSize)
                stagedStart += Self.stagingSize
                staged = 0
            }
        }
    }

    /// Puts every staged byte into the file: whole blocks direct, the partial last block through the
    /// cache. That block stays staged.
    func flush() throws(SystemError) {
        let whole = staged / alignment * alignment
        if whole > 0 { try writeDirect(whole) }
        var done = whole
        while done < staged {
            done += try Syscalls.pwrite(buffered, staging + done, staged - done, stagedStart + done, path: path)
        }
        if whole > 0 {
            staging.copyMemory(from: staging + whole, byteCount: staged - whole)
            stagedStart += whole
            staged -= whole
        }
    }

    /// Writes `staging[0..<count]` at `stagedStart`; `count` is a multiple of the alignment.
    private func writeDirect(_ count: Int) throws(SystemError) {
        var done = 0
        while done < count {
            do {
                done += try Syscalls.pwrite(isDirect ? fd : buffered, staging + done, count - done, stagedStart + done, path: path)
            } catch where error.errno == EINVAL && isDirect {
                // The device wants a larger alignment than ours.
                isDirect = false
            }
        }
    }
}
