// InputHashing: the manifest's XXH3-128 of every input file, fed in file order while the merge reads the bytes.
import Checksum
import FileIO
import Foundation
import MergeMethods
import SafetensorsFormat

/// One input file's hash, advanced in file order. The merge reads tensors in plan order, which is
/// file order for files saved by the usual tools, so the bytes it has just read are hashed from its
/// buffers while they are still in cache; whatever it passed over (headers, tensors it does not
/// read, tensors stored in another order, the part of the output a resumed run had already written)
/// is read cold with `pread`. Either way every byte is hashed once, in order, and the hash is the
/// file's XXH3-128. Hashing from a separate pass over the files instead read every input byte from
/// memory a second time: about a quarter of a task-arithmetic merge's CPU time.
final class InputHashCursor: @unchecked Sendable {
    let file: SafetensorsFile
    private let hasher = XXH3Hasher(.bits128)
    private let lock = NSLock()
    private var hashed = 0
    private var failure: Error?

    init(_ file: SafetensorsFile) { self.file = file }

    /// Hashes the file up to the end of `warm`, the file range whose bytes the caller has just read
    /// into `bytes`; bytes before it that are not hashed yet are read with `pread`.
    func advance(warm: Range<Int>, bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == warm.count)
        lock.withLock {
            guard failure == nil, warm.upperBound > hashed else { return }
            do {
                if hashed < warm.lowerBound { try hashCold(upTo: warm.lowerBound) }
                hasher.update(UnsafeRawBufferPointer(rebasing: bytes[(hashed - warm.lowerBound)...]))
                hashed = warm.upperBound
            } catch {
                failure = error
            }
        }
    }

    /// The file's manifest record, hashing whatever the merge did not read.
    func record() throws -> Manifest.FileRecord {
        try lock.withLock {
            if failure == nil {
                do { try hashCold(upTo: file.mapping.size) } catch { failure = error }
            }
            if let failure { throw failure }
            return Manifest.FileRecord(path: file.path, size: file.mapping.size, xxh3_128: hasher.hexDigest())
        }
    }

    private func hashCold(upTo end: Int) throws {
        guard end > hashed else { return }
        let reader = try PositionalReader(path: file.path)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        while hashed < end {
            let count = min(buffer.count, end - hashed)
            guard try reader.read(into: buffer.baseAddress!, count: count, at: hashed) else {
                throw MergeError.io(path: file.path, detail: "the file shrank while it was being merged")
            }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            hashed += count
        }
    }
}

/// The cursors of every input file, base first, in plan order.
final class InputHashes: @unchecked Sendable {
    private let cursors: [InputHashCursor]
    private let byFile: [ObjectIdentifier: InputHashCursor]

    init(_ plan: MergePlan) {
        cursors = plan.inputFiles.map(InputHashCursor.init)
        byFile = Dictionary(cursors.map { (ObjectIdentifier($0.file), $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// Hashes, on up to `threads` workers, every input up to the end of the bytes of `sources` that
    /// hold elements `elements`, which the caller has just read: `bytes(i)` are source i's.
    func advance(_ sources: [(SafetensorsFile, TensorInfo)], elements: Range<Int>, threads: Int,
                 bytes: (Int) -> UnsafeRawBufferPointer) {
        forEachChunk(sources.count, threads: threads) { _, index in
            let (file, info) = sources[index]
            byFile[ObjectIdentifier(file)]!.advance(warm: file.fileRange(of: info, elements: elements), bytes: bytes(index))
        }
    }

    /// Every input's manifest record, finishing the hashes on up to `threads` workers.
    func records(threads: Int) throws -> [Manifest.FileRecord] {
        var results = [Result<Manifest.FileRecord, Error>?](repeating: nil, count: cursors.count)
        results.withUnsafeMutableBufferPointer { slots in
            forEachChunk(cursors.count, threads: threads) { _, index in
                slots[index] = Result { try cursors[index].record() }
            }
        }
        return try results.map { try $0!.get() }
    }
}
