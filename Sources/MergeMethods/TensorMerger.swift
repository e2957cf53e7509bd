// TensorMerger: merges one tensor chunk by chunk, computing in cache-sized blocks, so memory is bounded by the chunk size, not the tensor.
import Dispatch
import Glibc
import Synchronization

/// Reads elements `elements` of a model's tensor as f32 into the buffer; `model` nil is the base.
public typealias ChunkReader = @Sendable (_ model: Int?, _ elements: Range<Int>, _ into: UnsafeMutablePointer<Float>) -> Void

/// Where a model's elements `elements` (`model` nil is the base) are bf16 bits already in memory, those
/// bits, which loops then widen as they use them; else nil, and `ChunkReader` converts them.
public typealias BFloat16Reader = @Sendable (_ model: Int?, _ elements: Range<Int>) -> UnsafePointer<UInt16>?

/// Brings elements `elements` of every input to where `read` takes them from, where they stay until
/// the window (or preparation window) holding them is done. Called by the worker about to read a
/// chunk, before its first read (the executor `pread`s the chunk into a buffer).
public typealias ChunkLoader = @Sendable (_ elements: Range<Int>) -> Void

/// Asks the loader to hold element e at e mod `chunks` chunks from now on (`chunks` divides a window;
/// nil: a whole window), so that a pass needing few chunks loaded at once reuses buffers a core's
/// cache holds.
public typealias LoadRing = (_ chunks: Int?) -> Void

/// Told that elements `elements` of every input have just been read, with how many threads it may
/// use, in element order: in the merge after each chunk, as soon as the chunks before it were told
/// too (`InOrderChunks`), and after every window of a preparation pass that reads its inputs for the
/// first time; always before the window is loaded over. (The executor hashes the inputs' bytes
/// there, in file order, while they are in cache.)
public typealias ReadObserver = (_ elements: Range<Int>, _ threads: Int) -> Void

/// Receives a finished block of the merged tensor: the window slot (chunk) it belongs to, its first
/// element's offset within that chunk, and its `count` values. Called on the worker that merged it.
public typealias BlockEmitter = (_ slot: Int, _ offset: Int, _ values: UnsafePointer<Float>, _ count: Int) -> Void

/// Per-thread scratch: one block of the base, of each fine-tune, of DARE's mask and of the output, and
/// one block of histogram keys per fine-tune.
/// A block is small enough that all of them stay in the core's cache while a chunk is merged.
public final class MergeWorkspace: @unchecked Sendable {
    public static let defaultBlockSize = 4096
    let blockSize: Int
    let base: UnsafeMutablePointer<Float>
    let models: [UnsafeMutablePointer<Float>]
    let scratch: UnsafeMutablePointer<Float>
    let output: UnsafeMutablePointer<Float>
    let keys: UnsafeMutablePointer<UInt32>

    public init(modelCount: Int, blockSize: Int = MergeWorkspace.defaultBlockSize) {
        self.blockSize = blockSize
        base = .allocate(capacity: blockSize)
        models = (0..<modelCount).map { _ in .allocate(capacity: blockSize) }
        scratch = .allocate(capacity: blockSize)
        output = .allocate(capacity: blockSize)
        keys = .allocate(capacity: modelCount * blockSize)
    }

    deinit {
        base.deallocate()
        models.forEach { $0.deallocate() }
        scratch.deallocate()
        output.deallocate()
        keys.deallocate()
    }

    /// Bytes held, for memory estimates.
    public static func byteCount(modelCount: Int, blockSize: Int = defaultBlockSize) -> Int { (2 * modelCount + 3) * blockSize * 4 }
}

/// Runs `body(worker, chunk)` over `chunkCount` chunks on up to `threads` workers, each taking the next
/// chunk when it finishes one, so a worker slowed by the writer or the hasher does not hold the others
/// back. Results may depend only on the chunk, never on the worker, which keeps output independent
/// of `threads` and of scheduling.
public func forEachChunk(_ chunkCount: Int, threads: Int, _ body: (_ worker: Int, _ chunk: Int) -> Void) {
    let workers = max(1, min(threads, chunkCount))
    if workers == 1 {
        for chunk in 0..<chunkCount { body(0, chunk) }
        return
    }
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
        while true {
            let chunk = next.wrappingAdd(1, ordering: .relaxed).oldValue
            guard chunk < chunkCount else { return }
            body(worker, chunk)
        }
    }
}

/// One tensor's merge. `prepare` runs the whole-tensor passes a method needs (TIES thresholds,
/// DARE's L1 norms); `mergeWindow` then produces the chunks, a window of them at a time, in order.
public final class TensorMerger: @unchecked Sendable {
    /// Bytes of TIES's select histograms per worker and fine-tune: the first pass's, and the second's
    /// (65,536 bins) allocated beside them when that pass runs.
    static let histogramBytes = (Histograms.highBitBins + Histograms.lowBitBins) * 4

    /// Most bytes TIES's threshold selection holds for a tensor of `elementCount` elements: the
    /// histograms or (never at the same time) the sampled bands.
    public static func thresholdSelectionBytes(modelCount: Int, threads: Int, elementCount: Int, chunkSize: Int) -> Int {
        max(threads * modelCount * histogramBytes,
            MagnitudeBands.byteCount(modelCount: modelCount, workers: threads, elementCount: elementCount, chunkSize: chunkSize))
    }

    public let method: MergeMethod
    public let parameters: TensorMergeParameters
    public let elementCount: Int
    public let chunkSize: Int
    let read: ChunkReader
    let readBFloat16: BFloat16Reader
    let load: ChunkLoader
    let holdChunks: LoadRing
    let observeRead: ReadObserver
    let modelCount: Int
    let dropout: [DropoutStream]
    var thresholds: [MagnitudeThreshold]
    /// Per fine-tune multiplier applied to kept DARE elements.
    var dareScale: [Float]
    /// Merging state: the next chunk `mergeWindow` expects, and per fine-tune the TIES ties seen so far.
    var nextChunk = 0
    var tiesSeen: [Int]
    /// Smallest tensor whose TIES thresholds are counted in sampled bands; smaller ones (where the
    /// sample would be much of the tensor) take the histograms. Settable so tests reach both.
    public var bandMinimumElements = 1 << 20
    /// Whether `prepare` found the TIES thresholds in sampled bands (else by the histograms).
    public private(set) var countedInBands = false
    /// Per fine-tune, the elements tied at its threshold in the chunks before each chunk (chunkCount + 1
    /// prefix sums), when the bands counted them.
    var tiesBeforeChunk: [[Int]]?

    public init(method: MergeMethod, parameters: TensorMergeParameters, elementCount: Int, canonicalName: String,
                seed: UInt64, chunkSize: Int, read: @escaping ChunkReader, readBFloat16: @escaping BFloat16Reader = { _, _ in nil },
                load: @escaping ChunkLoader = { _ in }, holdChunks: @escaping LoadRing = { _ in },
                observeRead: @escaping ReadObserver = { _, _ in }) {
        self.method = method
        self.parameters = parameters
        self.elementCount = elementCount
        self.chunkSize = chunkSize
        self.read = read
        self.readBFloat16 = readBFloat16
        self.load = load
        self.holdChunks = holdChunks
        self.observeRead = observeRead
        modelCount = parameters.weights.count
        dropout = (0..<parameters.weights.count).map { DropoutStream(seed: seed, tensorName: canonicalName, modelIndex: $0) }
        thresholds = Array(repeating: .keepEverything, count: parameters.weights.count)
        dareScale = parameters.densities.map { $0 >= 1 ? 1 : Float(1 / $0) }
        tiesSeen = Array(repeating: 0, count: parameters.weights.count)
    }

    public var chunkCount: Int { (elementCount + chunkSize - 1) / chunkSize }

    func elements(ofChunk chunk: Int) -> Range<Int> {
        (chunk * chunkSize)..<min(elementCount, (chunk + 1) * chunkSize)
    }

    /// How many elements chunk `chunk` holds (the last one may be short).
    public func chunkElementCount(_ chunk: Int) -> Int { elements(ofChunk: chunk).count }

    /// Calls `body` for consecutive blocks of at most `size` elements covering `range`.
    @inline(__always)
    func forEachBlock(of range: Range<Int>, size: Int, _ body: (Range<Int>) -> Void) {
        for start in stride(from: range.lowerBound, to: range.upperBound, by: size) {
            body(start..<min(range.upperBound, start + size))
        }
    }

    /// Reads fine-tune `model`'s block and subtracts the base block already in `workspace.base`: τᵢ.
    @inline(__always)
    func loadTaskVector(_ model: Int, block: Range<Int>, _ workspace: MergeWorkspace) {
        let tau = workspace.models[model], base = workspace.base
        if let bits = readBFloat16(model, block) {
            let theta = BFloat16Block(bits: bits)
            for j in 0..<block.count { tau[j] = theta[j] - base[j] }
            return
        }
        read(model, block, tau)
        for j in 0..<block.count { tau[j] = tau[j] - base[j] }
    }

    // MARK: - Preparation passes

    /// Whether `prepare` has whole-tensor passes to run: the inputs are read at least twice.
    public var needsPreparation: Bool { Self.needsPreparation(method, parameters) }

    /// Whether a tensor merged by `method` with `parameters` has whole-tensor passes before the merge.
    public static func needsPreparation(_ method: MergeMethod, _ parameters: TensorMergeParameters) -> Bool {
        switch method.sparsification {
        case .magnitude: parameters.densities.contains { $0 < 1 }
        case .random: parameters.rescale == .l1 && parameters.densities.contains { $0 < 1 }
        case .none: false
        }
    }

    /// Runs the whole-tensor passes: radix select for TIES, norms for L1-rescaled DARE, in windows of
    /// `window` chunks, as the merge will.
    public func prepare(threads: Int, workspaces: [MergeWorkspace], window: Int) {
        guard needsPreparation else { return }
        switch method.sparsification {
        case .magnitude: prepareMagnitude(threads: threads, workspaces: workspaces, window: window)
        case .random: prepareL1Rescale(threads: threads, workspaces: workspaces, window: window)
        case .none: break
        }
    }

    /// One pass over the tensor in windows of `window` chunks: `body(worker, chunk)` for every chunk,
    /// on the workers, each chunk loaded first.
    private func sweep(threads: Int, workers: Int, window: Int, _ body: (_ worker: Int, _ chunk: Int) -> Void) {
        holdChunks(nil)
        for first in stride(from: 0, to: chunkCount, by: window) {
            let count = min(window, chunkCount - first)
            forEachChunk(count, threads: min(threads, workers)) { worker, index in
                load(elements(ofChunk: first + index))
                body(worker, first + index)
            }
            observeRead(elements(ofChunk: first).lowerBound..<elements(ofChunk: first + count - 1).upperBound, min(threads, workers))
        }
    }

    /// One pass over the tensor with no barrier between windows, for a preparation pass that leaves
    /// hashing the inputs to the merge: part p of P takes chunks p, p + P, … in order. The loader holds
    /// element e at e mod P chunks meanwhile, so part p always reuses slot p, after finishing the chunk
    /// before, and its inputs' buffers stay in its core's cache: spread over a window, they were
    /// written back to memory (and read from it once more) at every chunk, 8 % of the pass.
    /// (Barriers at every window idled a worker at each window's last chunk; see `sweep`.)
    private func sweepWithoutHashing(threads: Int, workers: Int, window: Int, _ body: (_ worker: Int, _ chunk: Int) -> Void) {
        // As many parts as workers allow and divide the window (all of them for the executor's windows).
        let parts = (1...max(1, min(threads, workers))).last { window % $0 == 0 }!
        holdChunks(parts)
        defer { holdChunks(nil) }
        forEachChunk(parts, threads: parts) { worker, part in
            for chunk in stride(from: part, to: chunkCount, by: parts) {
                load(elements(ofChunk: chunk))
                body(worker, chunk)
            }
        }
    }

    private func prepareMagnitude(threads: Int, workspaces: [MergeWorkspace], window: Int) {
        precondition(elementCount < Int(UInt32.max), "TIES histograms count at most 2³² − 1 elements per tensor")
        let workers = workspaces.count
        let ranks: [Int] = parameters.densities.map { $0 >= 1 ? -1 : Int($0 * Double(elementCount)) }
        let selecting = (0..<modelCount).filter { ranks[$0] > 0 }
        for model in 0..<modelCount where ranks[model] <= 0 {
            thresholds[model] = ranks[model] < 0 ? .keepEverything : .keepNothing
        }
        guard !selecting.isEmpty else { return }
        if let exact = countInSampledBands(selecting: selecting, ranks: ranks, threads: threads, workspaces: workspaces, window: window) {
            for model in selecting { thresholds[model] = exact[model]!.threshold }
            countedInBands = true
            // Where every fine-tune dropping some ties has them counted per chunk, each chunk's ties are
            // numbered before the merge, which then never guesses.
            let counted = (0..<modelCount).map { model in
                thresholds[model].dropsSomeTies ? exact[model]?.tiesPerChunk : Array(repeating: 0, count: chunkCount)
            }
            if counted.allSatisfy({ $0 != nil }) {
                tiesBeforeChunk = counted.map { perChunk in perChunk!.reduce(into: [0]) { $0.append($0.last! + $1) } }
            }
            return
        }

        // Pass 1: high 16 bits of |τ|, split into exact and inexact elements. Histogram worker·T + i.
        let high = Histograms(count: workers * modelCount, bins: Histograms.highBitBins)
        defer { high.deallocate() }
        let tables = (0..<workers).map { worker in selecting.map { worker * modelCount + $0 } }
        sweep(threads: threads, workers: workers, window: window) { worker, chunk in
            let workspace = workspaces[worker]
            forEachBlock(of: elements(ofChunk: chunk), size: workspace.blockSize) { block in
                read(nil, block, workspace.base)
                for (i, model) in selecting.enumerated() {
                    read(model, block, workspace.models[model])
                    Histograms.highBitKeys(theta: workspace.models[model], base: workspace.base, n: block.count,
                                           into: workspace.keys + i * workspace.blockSize)
                }
                high.add(tables[worker], keys: workspace.keys, stride: workspace.blockSize, n: block.count)
            }
        }
        var refine: [(model: Int, bin: Int, above: Int)] = []
        for model in selecting {
            for worker in 1..<max(1, workers) { high.accumulate(worker * modelCount + model, into: model) }
            let (threshold, bin, above) = high.selectByHighBits(model, rank: ranks[model])
            if let threshold { thresholds[model] = threshold } else { refine.append((model, bin, above)) }
        }
        guard !refine.isEmpty else { return }

        // Pass 2, only where the rank fell among a bin's inexact elements: the low 16 bits within that bin.
        let low = Histograms(count: workers * modelCount, bins: Histograms.lowBitBins)
        defer { low.deallocate() }
        sweep(threads: threads, workers: workers, window: window) { worker, chunk in
            let workspace = workspaces[worker]
            forEachBlock(of: elements(ofChunk: chunk), size: workspace.blockSize) { block in
                read(nil, block, workspace.base)
                for (model, bin, _) in refine {
                    read(model, block, workspace.models[model])
                    low.addLowBits(worker * modelCount + model, bin: UInt32(bin), theta: workspace.models[model], base: workspace.base, n: block.count)
                }
            }
        }
        for (model, bin, above) in refine {
            for worker in 1..<max(1, workers) { low.accumulate(worker * modelCount + model, into: model) }
            thresholds[model] = low.selectByLowBits(model, bin: bin, rank: ranks[model], above: above)
        }
    }

    /// TIES's thresholds from one pass of counts inside bands a sample predicts (`MagnitudeBands`), or
    /// nil when the tensor is too small for a sample, the sample shows light values common, or a band
    /// missed; the histogram select runs then.
    private func countInSampledBands(selecting: [Int], ranks: [Int], threads: Int, workspaces: [MergeWorkspace],
                                     window: Int) -> [MagnitudeBands.Exact?]? {
        // Sixteen pieces of a sixteenth of a chunk, piece p at offset p of its own chunk (spread over
        // the tensor, the last, short chunk excepted): pieces loaded side by side then never share the
        // loader's buffer, where element e sits at e mod one window.
        let pieces = 16, pieceLength = chunkSize / pieces
        guard elementCount >= bandMinimumElements, chunkCount > pieces, chunkSize % pieces == 0 else { return nil }
        let workers = workspaces.count
        let sampleSize = pieces * pieceLength
        let samples = UnsafeMutablePointer<UInt32>.allocate(capacity: selecting.count * sampleSize)
        defer { samples.deallocate() }
        forEachChunk(pieces, threads: min(threads, workers)) { worker, piece in
            let workspace = workspaces[worker]
            let start = piece * (chunkCount - 1) / pieces * chunkSize + piece * pieceLength
            load(start..<start + pieceLength)
            forEachBlock(of: start..<start + pieceLength, size: workspace.blockSize) { block in
                read(nil, block, workspace.base)
                for (i, model) in selecting.enumerated() {
                    loadTaskVector(model, block: block, workspace)
                    let tau = workspace.models[model], sample = samples + i * sampleSize + piece * pieceLength + (block.lowerBound - start)
                    for j in 0..<block.count { sample[j] = magnitudeBits(tau[j]) }
                }
            }
        }
        var bands = [MagnitudeBands.Band?](repeating: nil, count: modelCount)
        let tables = (0..<workers).map { _ in
            let table = UnsafeMutablePointer<UInt32>.allocate(capacity: Histograms.highBitBins)
            table.initialize(repeating: 0, count: Histograms.highBitBins)
            return table
        }
        defer { tables.forEach { $0.deallocate() } }
        bands.withUnsafeMutableBufferPointer { bands in
            forEachChunk(selecting.count, threads: min(threads, workers)) { worker, i in
                let sample = UnsafeBufferPointer(start: samples + i * sampleSize, count: sampleSize)
                bands[selecting[i]] = MagnitudeBands.predict(sample, rank: ranks[selecting[i]], elementCount: elementCount, table: tables[worker])
            }
        }
        guard selecting.allSatisfy({ bands[$0] != nil }) else { return nil }
        let counter = MagnitudeBands(bands: bands, chunkCount: chunkCount, workers: workers,
                                     lightLimit: MagnitudeBands.lightLimit(elementCount: elementCount))
        sweepWithoutHashing(threads: threads, workers: workers, window: window) { worker, chunk in
            let workspace = workspaces[worker]
            forEachBlock(of: elements(ofChunk: chunk), size: workspace.blockSize) { block in
                read(nil, block, workspace.base)
                for model in selecting {
                    if let bits = readBFloat16(model, block) {
                        counter.count(worker: worker, chunk: chunk, model: model, theta: BFloat16Block(bits: bits), base: workspace.base, n: block.count)
                    } else {
                        read(model, block, workspace.models[model])
                        counter.count(worker: worker, chunk: chunk, model: model, theta: FloatBlock(values: workspace.models[model]),
                                      base: workspace.base, n: block.count)
                    }
                }
            }
        }
        return counter.exactThresholds(ranks: ranks)
    }

    /// DARE with L1 rescaling: the multiplier ‖τ‖₁ / ‖τ ⊙ m‖₁ needs both norms over the whole tensor.
    /// Partial sums are kept per block in f64 and added in element order, so the result is the same
    /// for any thread count or chunking.
    private func prepareL1Rescale(threads: Int, workspaces: [MergeWorkspace], window: Int) {
        let workers = workspaces.count
        let blockSize = workspaces[0].blockSize
        let dropping = (0..<modelCount).filter { parameters.densities[$0] < 1 }
        let blocksPerChunk = (chunkSize + blockSize - 1) / blockSize
        // Per fine-tune and block: (Σ|τ|, Σ|τ|·m) over the block.
        let partial = UnsafeMutablePointer<(full: Double, kept: Double)>.allocate(capacity: modelCount * chunkCount * blocksPerChunk)
        partial.initialize(repeating: (0, 0), count: modelCount * chunkCount * blocksPerChunk)
        defer { partial.deallocate() }
        sweep(threads: threads, workers: workers, window: window) { worker, chunk in
            let workspace = workspaces[worker]
            let chunkRange = elements(ofChunk: chunk)
            forEachBlock(of: chunkRange, size: blockSize) { block in
                read(nil, block, workspace.base)
                let blockIndex = chunk * blocksPerChunk + (block.lowerBound - chunkRange.lowerBound) / blockSize
                for model in dropping {
                    loadTaskVector(model, block: block, workspace)
                    let tau = workspace.models[model], mask = workspace.scratch
                    dropout[model].fillMask(mask, elements: block, threshold: DropoutStream.keepThreshold(density: parameters.densities[model]))
                    var full = 0.0, kept = 0.0
                    for j in 0..<block.count {
                        let magnitude = Double(abs(tau[j]))
                        full += magnitude
                        kept += magnitude * Double(mask[j])
                    }
                    partial[model * chunkCount * blocksPerChunk + blockIndex] = (full, kept)
                }
            }
        }
        for model in dropping {
            var full = 0.0, kept = 0.0
            for i in 0..<(chunkCount * blocksPerChunk) {
                full += partial[model * chunkCount * blocksPerChunk + i].full
                kept += partial[model * chunkCount * blocksPerChunk + i].kept
            }
            dareScale[model] = kept > 0 ? Float(full / kept) : 1
        }
    }

    // MARK: - Merging

    /// Merges chunks `first ..< first + count` on up to `threads` workers (one workspace each), handing
    /// each finished block to `emit` with the chunk's slot in the window. Windows must come in order.
    ///
    /// Where TIES drops some of the elements tied at its threshold, which ones depends on how many ties
    /// the chunks before held, which workers merging chunks side by side do not know yet. A chunk
    /// therefore keeps all its ties and counts them unless the chunks already finished in order show
    /// the kept ties ran out (then it keeps none). Once the window is done the counts are exact, and
    /// the few chunks that guessed wrong (the one where the kept ties run out, and those merged beside
    /// it) are merged again with their ties numbered; `emit` overwrites their blocks. Counting each
    /// window's ties before merging it read the inputs of about half of every tensor twice. When the
    /// sampled bands counted the threshold's ties chunk by chunk (`tiesBeforeChunk`), every chunk's
    /// ties are numbered from the start and nothing is guessed.
    public func mergeWindow(first: Int, count: Int, workspaces: [MergeWorkspace], threads: Int, emit: BlockEmitter) {
        precondition(first == nextChunk, "windows must be merged in order")
        let threads = min(threads, workspaces.count)
        let observed = InOrderChunks(count: count)
        // Inputs loaded at once: two chunks per worker, so that their buffers stay in the workers'
        // caches (a slot is loaded again only once its chunk was merged and hashed); the whole window
        // where TIES may merge chunks again after it (guessed ties). Spread over the window, every
        // buffer was written back to memory before it was read again.
        let ring = tiesBeforeChunk == nil && thresholds.contains(where: \.dropsSomeTies) ? nil : 2 * workspaces.count
        holdChunks(ring)
        let loadChunk = { (slot: Int) in
            if let ring, slot >= ring { observed.waitUntilDone(slot - ring) }
            self.load(self.elements(ofChunk: first + slot))
        }
        let observeChunk = { (slot: Int) in observed.finish(slot) { self.observeRead(self.elements(ofChunk: first + $0), 1) } }
        if let tiesBeforeChunk {
            let none = [Bool](repeating: false, count: modelCount)
            forEachChunk(count, threads: threads) { worker, slot in
                let chunk = first + slot
                loadChunk(slot)
                _ = mergeChunk(chunk, workspaces[worker], ties: tiesBeforeChunk.map { $0[chunk]..<$0[chunk + 1] }, counting: none) {
                    offset, values, n in emit(slot, offset, values, n)
                }
                observeChunk(slot)
            }
            nextChunk += count
            return
        }
        let kept = thresholds.map(\.keptAtThreshold)
        let dropping = thresholds.map(\.dropsSomeTies)
        // Per slot: per fine-tune whether its ties were kept and counted (else none were kept), and the count.
        let progress = Mutex(TieProgress(seen: tiesSeen, slots: count))
        forEachChunk(count, threads: threads) { worker, slot in
            loadChunk(slot)
            let counting = progress.withLock { state in (0..<modelCount).map { dropping[$0] && state.seen[$0] < kept[$0] } }
            let counts = mergeChunk(first + slot, workspaces[worker], ties: kept.map { $0..<$0 }, counting: counting) {
                offset, values, n in emit(slot, offset, values, n)
            }
            progress.withLock { $0.finish(slot, counting: counting, counts: counts) }
            observeChunk(slot)
        }
        let (counting, counts) = progress.withLock { ($0.counting, $0.counts) }
        // Exact numbering of every chunk's ties, and the chunks whose guess was wrong.
        var tieRanges: [[Range<Int>]] = []
        var remerge: [Int] = []
        for slot in 0..<count {
            var wrong = false
            tieRanges.append((0..<modelCount).map { model in
                guard dropping[model] else { return 0..<0 }
                // A chunk that kept no ties did so because the chunks before it, all counted, had used
                // up the ties to keep: `tiesSeen` is past `kept` here (its own ties were not counted).
                guard counting[slot]![model] else { return tiesSeen[model]..<tiesSeen[model] }
                let range = tiesSeen[model]..<tiesSeen[model] + counts[slot]![model]
                tiesSeen[model] = range.upperBound
                wrong = wrong || range.upperBound > kept[model]
                return range
            })
            if wrong { remerge.append(slot) }
        }
        forEachChunk(remerge.count, threads: threads) { worker, index in
            let slot = remerge[index]
            _ = mergeChunk(first + slot, workspaces[worker], ties: tieRanges[slot], counting: [Bool](repeating: false, count: modelCount)) {
                offset, values, n in emit(slot, offset, values, n)
            }
        }
        nextChunk += count
    }

    /// Merges one chunk block by block. `ties[i]` numbers the chunk's elements tied at fine-tune i's
    /// TIES threshold, counted over the whole tensor; where `counting[i]`, all ties are kept and the
    /// returned array counts them instead.
    private func mergeChunk(_ chunk: Int, _ workspace: MergeWorkspace, ties: [Range<Int>], counting: [Bool],
                            emit: (Int, UnsafePointer<Float>, Int) -> Void) -> [Int] {
        let range = elements(ofChunk: chunk)
        var counted = [Int](repeating: 0, count: modelCount)
        // Where a chunk holds the last kept tie, the ties seen so far carry from block to block.
        var tiesBefore = ties.map(\.lowerBound)
        forEachBlock(of: range, size: workspace.blockSize) { block in
            if method == .linear {
                for model in 0..<modelCount { read(model, block, workspace.models[model]) }
                combineLinear(count: block.count, workspace)
            } else {
                read(nil, block, workspace.base)
                for model in 0..<modelCount {
                    loadTaskVector(model, block: block, workspace)
                    counted[model] += sparsify(model: model, block: block, ties: ties[model], tiesBefore: &tiesBefore[model],
                                               counting: counting[model], workspace)
                }
                combine(count: block.count, workspace)
            }
            emit(block.lowerBound - range.lowerBound, workspace.output, block.count)
        }
        return counted
    }

    /// Combines the block's sparsified task vectors into the merged block, in `workspace.output`.
    /// Up to eight fine-tunes, their count is a compile-time constant (`FixedInputs`).
    private func combine(count: Int, _ workspace: MergeWorkspace) {
        let blocks = workspace.models, weights = parameters.weights
        switch modelCount {
        case 1: combine(count: count, workspace, FixedInputs<1>(blocks, weights))
        case 2: combine(count: count, workspace, FixedInputs<2>(blocks, weights))
        case 3: combine(count: count, workspace, FixedInputs<3>(blocks, weights))
        case 4: combine(count: count, workspace, FixedInputs<4>(blocks, weights))
        case 5: combine(count: count, workspace, FixedInputs<5>(blocks, weights))
        case 6: combine(count: count, workspace, FixedInputs<6>(blocks, weights))
        case 7: combine(count: count, workspace, FixedInputs<7>(blocks, weights))
        case 8: combine(count: count, workspace, FixedInputs<8>(blocks, weights))
        default: combine(count: count, workspace, AnyInputs(blocks: blocks, weights: weights))
        }
    }

    /// Sixteen lanes at a time with the running sums in registers: loops over whole arrays, model by
    /// model, stored and reloaded every sum once per model, and took a fifth of a DARE-TIES merge.
    /// Each lane does the reference's operations in the reference's order, so results are unchanged.
    @inline(__always)
    private func combine<Inputs: CombineInputs>(count: Int, _ workspace: MergeWorkspace, _ inputs: Inputs) {
        typealias Lanes = SIMD16<Float>
        let lambda = parameters.lambda, normalize = parameters.normalize, electsSign = method.electsSign
        let total = parameters.weights.reduce(Float(0)) { $0 + $1 }
        let base = workspace.base, output = workspace.output
        // Workspace arrays hold a whole block, a multiple of 16, so the last lanes may read past `count`.
        @inline(__always) func load(_ pointer: UnsafePointer<Float>, _ start: Int) -> Lanes {
            UnsafeRawPointer(pointer + start).loadUnaligned(as: Lanes.self)
        }
        for start in stride(from: 0, to: count, by: Lanes.scalarCount) {
            var acc = Lanes(repeating: 0)
            if electsSign {
                // dᵢ = wᵢ·τ̂ᵢ; the majority sign s is the sign of Σdᵢ (≥ 0 → +); only dᵢ of that sign
                // are summed, and with normalize divided by the sum of their weights. dᵢ agrees
                // when s·dᵢ > 0 (s = ±1, so exact): one compare per fine-tune, where combining
                // `dᵢ > 0` and `dᵢ < 0` masks cost AVX2 (no mask registers) a repacking of each.
                var sum = Lanes(repeating: 0)
                for model in 0..<inputs.count { sum = sum + inputs.weight(model) * load(inputs.block(model), start) }
                let sign = Lanes(repeating: 1).replacing(with: -1, where: .!(sum .>= 0))
                var div = Lanes(repeating: 0)
                for model in 0..<inputs.count {
                    let d = inputs.weight(model) * load(inputs.block(model), start)
                    let agrees = d * sign .> 0
                    acc = acc + Lanes(repeating: 0).replacing(with: d, where: agrees)
                    div = div + Lanes(repeating: 0).replacing(with: inputs.weight(model), where: agrees)
                }
                if normalize { acc = acc / div.replacing(with: 1, where: div .== 0) }
            } else {
                for model in 0..<inputs.count { acc = acc + inputs.weight(model) * load(inputs.block(model), start) }
                if normalize { acc = acc / total }
            }
            let merged = load(base, start) + lambda * acc
            if count - start >= Lanes.scalarCount {
                UnsafeMutableRawPointer(output + start).storeBytes(of: merged, as: Lanes.self)
            } else {
                for lane in 0..<(count - start) { output[start + lane] = merged[lane] }
            }
        }
    }

    /// linear: Σwᵢθᵢ, divided by Σwᵢ when normalising. The base model takes no part.
    private func combineLinear(count: Int, _ workspace: MergeWorkspace) {
        // The sum runs in `output` itself.
        let output = workspace.output
        output.update(repeating: 0, count: count)
        for model in 0..<modelCount {
            let theta = workspace.models[model], w = parameters.weights[model]
            for j in 0..<count { output[j] = output[j] + w * theta[j] }
        }
        if parameters.normalize {
            let total = parameters.weights.reduce(Float(0)) { $0 + $1 }
            for j in 0..<count { output[j] = output[j] / total }
        }
    }

    /// Zeroes the elements of the block's τ that the method drops, rescaling DARE's survivors.
    /// `ties` are the chunk's tied elements' numbers; `tiesBefore` counts the ties before this block.
    /// With `counting`, every tie is kept and the number of them is returned.
    private func sparsify(model: Int, block: Range<Int>, ties: Range<Int>, tiesBefore: inout Int, counting: Bool,
                          _ workspace: MergeWorkspace) -> Int {
        let tau = workspace.models[model]
        let density = parameters.densities[model]
        switch method.sparsification {
        case .none:
            return 0
        case .magnitude:
            let threshold = thresholds[model]
            if threshold.keepAll { return 0 }
            if threshold.keepNone { tau.update(repeating: 0, count: block.count); return 0 }
            let bits = threshold.thresholdBits
            if counting {
                // Branch-free on the bits (`isEqual`), so that the loop vectorises.
                let raw = UnsafeMutableRawPointer(tau).assumingMemoryBound(to: UInt32.self)
                var equal: UInt32 = 0
                for j in 0..<block.count {
                    let magnitude = raw[j] & 0x7FFF_FFFF
                    raw[j] = magnitude >= bits ? raw[j] : 0
                    equal &+= isEqual(magnitude, bits)
                }
                return Int(equal)
            }
            // Only the chunk where the kept ties run out needs the serial, counting loop; every other
            // chunk keeps all its ties (|τ| ≥ t) or none (|τ| > t), which are branch-free and vectorise.
            var lowest = bits
            if threshold.dropsSomeTies {
                if ties.lowerBound >= threshold.keptAtThreshold {
                    lowest = bits + 1
                } else if ties.upperBound > threshold.keptAtThreshold {
                    // In that chunk, a block whose ties all lie before or after the last kept one takes
                    // the vector loops too, after a vector count of its ties; only the block holding
                    // the last kept tie numbers them one by one.
                    let raw = UnsafeRawPointer(tau).assumingMemoryBound(to: UInt32.self)
                    var equal: UInt32 = 0
                    for j in 0..<block.count { equal &+= isEqual(raw[j] & 0x7FFF_FFFF, bits) }
                    if tiesBefore >= threshold.keptAtThreshold {
                        lowest = bits + 1
                    } else if tiesBefore + Int(equal) > threshold.keptAtThreshold {
                        var equalSeen = tiesBefore
                        for j in 0..<block.count {
                            let magnitude = magnitudeBits(tau[j])
                            let keep = magnitude > bits || (magnitude == bits && equalSeen < threshold.keptAtThreshold)
                            equalSeen += magnitude == bits ? 1 : 0
                            tau[j] = keep ? tau[j] : 0
                        }
                        tiesBefore = equalSeen
                        return 0
                    }
                    tiesBefore += Int(equal)
                }
            }
            for j in 0..<block.count { tau[j] = magnitudeBits(tau[j]) >= lowest ? tau[j] : 0 }
            return 0
        case .random:
            guard density < 1 else { return 0 }
            let mask = workspace.scratch
            dropout[model].fillMask(mask, elements: block, threshold: DropoutStream.keepThreshold(density: density))
            switch parameters.rescale {
            case .density:
                // (τ·m)/density, in that order, as the reference computes it.
                let d = Float(density)
                for j in 0..<block.count { tau[j] = (tau[j] * mask[j]) / d }
            case .l1, .none:
                let scale = parameters.rescale == .none ? 1 : dareScale[model]
                for j in 0..<block.count { tau[j] = (tau[j] * mask[j]) * scale }
            }
            return 0
        }
    }
}

/// The fine-tunes' blocks and weights, as `combine` loops over them.
protocol CombineInputs {
    var count: Int { get }
    func block(_ model: Int) -> UnsafeMutablePointer<Float>
    func weight(_ model: Int) -> Float
}

/// A compile-time number of fine-tunes, whose block pointers and weights the loops keep in registers
/// and unroll: read from arrays, they were loaded again for every 16 lanes (the compiler must assume
/// the output's stores change them), and the combine took 30-45 % longer on AVX2.
struct FixedInputs<let N: Int>: CombineInputs {
    let blocks: InlineArray<N, UnsafeMutablePointer<Float>>
    let weights: InlineArray<N, Float>

    init(_ blocks: [UnsafeMutablePointer<Float>], _ weights: [Float]) {
        self.blocks = InlineArray { blocks[$0] }
        self.weights = InlineArray { weights[$0] }
    }

    var count: Int { N }
    func block(_ model: Int) -> UnsafeMutablePointer<Float> { blocks[model] }
    func weight(_ model: Int) -> Float { weights[model] }
}

/// Any number of fine-tunes.
struct AnyInputs: CombineInputs {
    let blocks: [UnsafeMutablePointer<Float>]
    let weights: [Float]

    var count: Int { blocks.count }
    func block(_ model: Int) -> UnsafeMutablePointer<Float> { blocks[model] }
    func weight(_ model: Int) -> Float { weights[model] }
}

/// What `mergeWindow` knows while its chunks are merged side by side: per fine-tune the ties counted
/// in the chunks finished in order from the window's first, and per finished chunk how it treated ties.
struct TieProgress {
    var seen: [Int]
    var counting: [[Bool]?]
    var counts: [[Int]?]
    private var prefix = 0

    init(seen: [Int], slots: Int) {
        self.seen = seen
        counting = Array(repeating: nil, count: slots)
        counts = Array(repeating: nil, count: slots)
    }

    /// Records chunk `slot` and adds the counts of every chunk now finished in order to `seen`. A
    /// fine-tune whose ties a chunk did not count had already run out of ties to keep: it stays so.
    mutating func finish(_ slot: Int, counting: [Bool], counts: [Int]) {
        self.counting[slot] = counting
        self.counts[slot] = counts
        while prefix < self.counts.count, let done = self.counts[prefix], let kinds = self.counting[prefix] {
            for model in seen.indices where kinds[model] { seen[model] += done[model] }
            prefix += 1
        }
    }
}

/// Runs an action on a window's chunks in order, each as soon as it and every chunk before it are
/// finished, on the worker that finishes that run: mostly the one that merged the chunk, while its
/// inputs are still in its core's cache. (Hashing each window's inputs after the window read 8 MiB
/// back from memory per window.) One worker at a time runs actions; a chunk finished meanwhile is
/// left to it.
final class InOrderChunks: Sendable {
    private struct State {
        var finished: [Bool]
        /// Chunks before `next` are claimed for their action, chunks before `done` have had it.
        var next = 0
        var done = 0
        var acting = false
    }
    private let state: Mutex<State>

    init(count: Int) { state = Mutex(State(finished: Array(repeating: false, count: count))) }

    func finish(_ slot: Int, _ action: (Int) -> Void) {
        var run = state.withLock { state -> Range<Int> in
            state.finished[slot] = true
            return state.acting ? 0..<0 : Self.claim(&state)
        }
        while !run.isEmpty {
            for slot in run { action(slot) }
            run = state.withLock { state in
                state.done = run.upperBound
                return Self.claim(&state)
            }
        }
    }

    /// Returns once chunk `slot` has had its action (and so was finished). Rarely waits: the chunks
    /// of a window are handed out in order, and a worker waits here only for a chunk two rounds back.
    func waitUntilDone(_ slot: Int) {
        while state.withLock({ $0.done <= slot }) { sched_yield() }
    }

    /// The finished chunks next in order, marked as being acted on; none (and no longer acting) if the
    /// next chunk is not finished.
    private static func claim(_ state: inout State) -> Range<Int> {
        let start = state.next
        while state.next < state.finished.count, state.finished[state.next] { state.next += 1 }
        state.acting = state.next > start
        return start..<state.next
    }
}
