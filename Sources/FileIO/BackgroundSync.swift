// BackgroundSync: an output file's bytes made durable on a background thread every few MiB, then dropped from the page cache.
import Dispatch
import Glibc

/// Paces the device behind a file written through the page cache: every `interval` bytes a background
/// thread `fdatasync`s the file and drops the pages it made durable, while the writer goes on.
///
/// Why not `O_DIRECT` (the shards' writer until session 10): on a virtual disk with a write-back cache
/// in the host (this machine kind), the host flushes its cache when the guest issues a flush — and
/// meanwhile completes no write. ext4 flushes at each journal commit (every 5 s), so a writer waiting
/// on each write stalled for 1.5 s at a time while the merge's workers idled, and the host flushed all
/// it held at the final fsync. Through the page cache the writer never waits on the device; a flush
/// every 32 MiB keeps the host writing in step with the merge instead of in one burst at the end; and
/// dropping the durable pages keeps the output from filling memory. TIES 7.7–8.0 → 6.1–6.3 s, task
/// arithmetic 6.5 → 4.0–4.9 s (16–256 MiB intervals measured: 16–64 equal, 128 and 256 slower).
final class BackgroundSync: @unchecked Sendable {
    private let fd: Int32
    private let path: String
    private let interval: Int
    private let queue = DispatchQueue(label: "streammerge.sync")
    /// Held while a sync runs: one at a time, and its `failure` is visible to whoever takes it next.
    private let idle = DispatchSemaphore(value: 1)
    private var failure: SystemError?
    /// Writer's side: the position the last sync was asked for; bytes before it may be dropped once synced.
    private var requested: Int

    init(fd: Int32, path: String, from position: Int, interval: Int) {
        self.fd = fd
        self.path = path
        requested = position
        self.interval = interval
    }

    /// Called by the writer after each write: starts a sync once `interval` bytes were written since the
    /// last, unless one still runs (the next write asks again). Throws a failed earlier sync's error.
    func wrote(upTo position: Int) throws(SystemError) {
        guard position - requested >= interval, idle.wait(timeout: .now()) == .success else { return }
        if let failure {
            idle.signal()
            throw failure
        }
        let durable = requested..<position
        requested = position
        queue.async { [self] in
            do throws(SystemError) {
                try Syscalls.fdatasync(fd, path: path)
                Syscalls.dropCached(fd, durable)
            } catch {
                failure = error
            }
            idle.signal()
        }
    }

    /// Waits for the running sync, if any; throws its error, or an earlier one's.
    func finish() throws(SystemError) {
        idle.wait()
        defer { idle.signal() }
        if let failure { throw failure }
    }
}
