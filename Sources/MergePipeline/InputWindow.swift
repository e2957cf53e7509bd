// InputWindow: the inputs' bytes of the window being merged, read with pread into one buffer per input.
import FileIO
import Foundation
import SafetensorsFormat

/// Holds, for each input of the tensor being merged (base first, then the fine-tunes), the bytes of
/// the current window. Workers `pread` each chunk's bytes just before merging it, and the merge
/// converts from there while they are in cache; the window's bytes are then hashed in file order
/// before the next window reuses the buffers.
///
/// A tensor read twice (TIES's thresholds, DARE's L1 norms, then the merge) whose inputs fit
/// `mappedTensorBytes` is read through the mapping instead: its pages are mapped by the first pass's
/// faults and read again by the merge at no cost, then released window by window. On session 10's host
/// that took TIES from 11.0–11.4 to 10.0–10.2 core-s (the kernel's copies had been 2.9). A tensor read once stays
/// with `pread`: on session 6's host a page fault per 64 KiB, an `madvise` and a TLB shootdown per
/// release span, and conversion loops stalled on memory at every scattered 4 KiB page cost more CPU
/// than the kernel's copy (which streams pages at memory speed) — but less than two copies.
///
/// Windows are aligned: element e of a tensor lives at e mod `ring` (a window, unless a pass asks
/// for fewer) in its input's buffer.
final class InputWindow: @unchecked Sendable {
    /// Elements per buffer: one window.
    let capacity: Int
    /// Element e sits at e mod `ring` in its input's buffer: a window's elements, or fewer (dividing
    /// them) for a pass whose buffers should stay in cache.
    var ring: Int {
        didSet { precondition(ring > 0 && capacity % ring == 0, "a load ring divides the window") }
    }
    private let buffers: [UnsafeMutableRawPointer]
    private var readers: [String: PositionalReader] = [:]
    private(set) var sources: [(SafetensorsFile, TensorInfo)] = []
    private var sourceReaders: [PositionalReader] = []
    /// The inputs' dtypes, apart from `sources` so that per-block reads copy no `TensorInfo`.
    private var dtypes: [DType] = []
    /// Whether the current tensor is read through the mapping, and where its inputs' data start there.
    private var mapped = false
    private var mappedData: [UnsafeRawPointer] = []
    private let lock = NSLock()
    private var failure: Error?

    /// Buffers of `capacity` elements of `widestElement` bytes for `inputCount` inputs.
    init(capacity: Int, widestElement: Int, inputCount: Int) {
        self.capacity = capacity
        ring = capacity
        buffers = (0..<inputCount).map { _ in .allocate(byteCount: capacity * widestElement, alignment: 64) }
    }

    deinit { buffers.forEach { $0.deallocate() } }

    /// Starts a tensor whose inputs are `sources` (the base's first, when there is one), read through
    /// the mapping when `mapped`.
    func begin(_ sources: [(SafetensorsFile, TensorInfo)], mapped: Bool) throws {
        precondition(sources.count <= buffers.count)
        self.sources = sources
        dtypes = sources.map(\.1.dtype)
        self.mapped = mapped
        mappedData = mapped ? sources.map { $0.0.dataAddress(of: $0.1) } : []
        sourceReaders = try sources.map { file, _ in
            if let reader = readers[file.path] { return reader }
            let reader = try PositionalReader(path: file.path)
            readers[file.path] = reader
            return reader
        }
    }

    /// Reads elements `elements` (within one window) of every input into the buffers (nothing to do for
    /// a mapped tensor). Called by workers; a failure is kept for `rethrow()`.
    func load(_ elements: Range<Int>) {
        guard !mapped else { return }
        for (index, (file, info)) in sources.enumerated() {
            let range = file.fileRange(of: info, elements: elements)
            do {
                guard try sourceReaders[index].read(into: UnsafeMutableRawPointer(mutating: address(index, elements)),
                                                    count: range.count, at: range.lowerBound) else {
                    throw MergeError.io(path: file.path, detail: "tensor '\(info.name)' ends past the end of the file")
                }
            } catch {
                lock.withLock { if failure == nil { failure = error } }
            }
        }
    }

    /// Drops the mapped pages of elements `elements` of every input, which the merge is done with (a
    /// mapped tensor's window, once merged and hashed). Pages shared with the next window stay.
    func release(_ elements: Range<Int>) {
        guard mapped else { return }
        for (file, info) in sources { file.mapping.release(file.fileRange(of: info, elements: elements)) }
    }

    /// Converts elements `elements` of input `index` (loaded before) to f32 into `destination`.
    func readFloats(_ index: Int, elements: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        let dtype = dtypes[index]
        convertToFloat(destination, from: address(index, elements), dtype: dtype, count: elements.count)
    }

    /// The loaded bits of elements `elements` of input `index` when it is bf16 (loops widen them as they
    /// use them), else nil.
    func bfloat16Bits(_ index: Int, elements: Range<Int>) -> UnsafePointer<UInt16>? {
        guard dtypes[index] == .bf16 else { return nil }
        return UnsafePointer(address(index, elements).assumingMemoryBound(to: UInt16.self))
    }

    /// The loaded bytes of elements `elements` (within one window) of input `index`.
    func bytes(_ index: Int, elements: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: address(index, elements), count: elements.count * dtypes[index].size)
    }

    /// Where element `elements.lowerBound` of input `index` sits in its buffer, or in the mapping.
    private func address(_ index: Int, _ elements: Range<Int>) -> UnsafeRawPointer {
        if mapped { return mappedData[index] + elements.lowerBound * dtypes[index].size }
        return UnsafeRawPointer(buffers[index] + (elements.lowerBound % ring) * dtypes[index].size)
    }

    /// Throws the first read failure.
    func rethrow() throws {
        if let error = lock.withLock({ failure }) { throw error }
    }
}
