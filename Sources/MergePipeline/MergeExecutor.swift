// MergeExecutor: runs a data-free plan layer by layer — merge in chunks, write, hash, journal, manifest last.
import Checksum
import Dispatch
import Distillation
import FileIO
import Foundation
import MergeMethods
import SafetensorsFormat
import TensorKernels

/// Options of one `merge` run.
public struct MergeOptions: Sendable {
    public var outputDirectory: String
    public var threads: Int
    public var resume = false
    public var force = false
    /// Called after each layer with (layers done, layer count, bytes written so far).
    public var progress: (@Sendable (Int, Int, Int) -> Void)? = nil
    /// Data-driven methods: called after each epoch with (block, epoch, epochs, loss).
    public var distillProgress: DistillProgress? = nil
    /// End-to-end methods: called after each step with (step, steps, loss).
    public var trainingProgress: TrainingProgress? = nil
    /// Where data-driven methods keep their activation cache (default: inside the output's `.streammerge`).
    public var scratchDirectory: String? = nil
    /// Largest tensor (its inputs' bytes together) read through the mapping when a method reads it
    /// twice (see `InputWindow`); its pages stay mapped between the two passes.
    public var mappedTensorBytes = MergePlan.defaultMappedTensorBytes

    public init(outputDirectory: String, threads: Int, resume: Bool = false, force: Bool = false) {
        self.outputDirectory = outputDirectory
        self.threads = max(1, threads)
        self.resume = resume
        self.force = force
    }
}

/// Runs `plan`, writing `options.outputDirectory`. Returns the manifest it wrote.
public func executeMerge(_ plan: MergePlan, options: MergeOptions) throws -> Manifest {
    let start = Date()
    let out = options.outputDirectory
    let fileManager = FileManager.default
    let journalBefore = try prepareOutputDirectory(out, options: options)

    let configHash = plan.config.canonicalText.utf8CString.withUnsafeBytes { xxh3_128Hex(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
    // Input hashes are for the manifest; they are fed as the merge reads the inputs. The journal
    // identifies inputs by size and mtime instead.
    let inputs = try inputIdentities(plan)
    let inputHashes = InputHashes(plan)
    var journal = Journal(
        config_xxh3_128: configHash, inputs: inputs, tensors_done: 0, shard: 0, shard_position: 0,
        shard_prefix_xxh3_128: "", finished_shards: [], tensor_hashes: [], layer_statistics: nil, layer_timings: nil)
    if let previous = journalBefore {
        guard previous.config_xxh3_128 == configHash else {
            throw MergeError.resume(path: out, detail: "the config changed since the interrupted run")
        }
        guard previous.inputs == inputs else {
            throw MergeError.resume(path: out, detail: "an input file changed since the interrupted run")
        }
        journal = previous
    }
    try fileManager.createDirectory(atPath: out + "/.streammerge", withIntermediateDirectories: true)
    // Journaled before any work, so a run killed while training (before its first layer) can resume.
    if journalBefore == nil { try journal.save(in: out) }
    let journalWriter = JournalWriter(directory: out)
    let scratch = options.scratchDirectory ?? out + "/.streammerge/scratch"
    let distiller = try plan.config.distill.map { settings in
        try makeDataDrivenRunner(plan: plan, settings: settings, scratch: scratch, threads: options.threads, journal: journal, options: options)
    }

    let workers = min(options.threads, 64)
    let writer = ShardStreamWriter(plan: plan, directory: out)
    // Position 0: nothing of the shard was written yet (killed before the first layer).
    try writer.open(shard: journal.shard, resumingAt: journalBefore == nil || journal.shard_position == 0 ? nil : journal.shard_position,
                    expectedPrefixHash: journal.shard_prefix_xxh3_128)
    var finishedShards = journal.finished_shards
    let workspaces = (0..<workers).map { _ in MergeWorkspace(modelCount: plan.models.count) }
    let bytesOut = (0..<MergePlan.outputWindows * MergePlan.windowChunks(workers: workers)).map { _ in
        UnsafeMutableRawPointer.allocate(byteCount: plan.chunkSize * plan.widestOutputElement, alignment: 64)
    }
    defer { bytesOut.forEach { $0.deallocate() } }
    let inputWindow = InputWindow(capacity: MergePlan.windowChunks(workers: workers) * plan.chunkSize,
                                  widestElement: plan.widestInputElement, inputCount: plan.models.count + 1)
    // Writes, hashes and journals run in order on the pipeline's thread while the workers merge on;
    // whatever touches the writer from this thread drains it first.
    let pipeline = WritePipeline(writer: writer, sets: MergePlan.outputWindows)
    let records = TensorRecords(journal.tensor_hashes)

    for (layerNumber, layer) in plan.layers.enumerated() {
        guard layer.tensors.upperBound > journal.tensors_done else { continue }
        let trained = try distiller?.trainedTensors(layer.key)
        for index in layer.tensors where index >= journal.tensors_done {
            let tensor = plan.tensors[index]
            let shardIndex = plan.shards.firstIndex { $0.tensors.contains(index) }!
            if shardIndex != writer.shardIndex {
                try pipeline.drain()
                finishedShards.append(try writer.commit())
                try writer.open(shard: shardIndex, resumingAt: nil, expectedPrefixHash: "")
                journal = Journal(
                    config_xxh3_128: configHash, inputs: inputs, tensors_done: index, shard: shardIndex,
                    shard_position: writer.position, shard_prefix_xxh3_128: writer.prefixHash(),
                    finished_shards: finishedShards, tensor_hashes: records.all, layer_statistics: distiller?.statistics, layer_timings: distiller?.timings)
                try journalWriter.save(journal)
            }
            let hasher = if let values = trained?[tensor.canonicalName] {
                try writeTrainedTensor(values, tensor, plan: plan, pipeline: pipeline, bytes: bytesOut[0])
            } else {
                try mergeTensor(tensor, plan: plan, pipeline: pipeline, workers: workers, workspaces: workspaces, bytesOut: bytesOut,
                                inputs: inputWindow, inputHashes: inputHashes, mappedTensorBytes: options.mappedTensorBytes)
            }
            // The tensor's hash is final once the pipeline has written it.
            let fileName = plan.shards[shardIndex].fileName
            pipeline.run {
                records.append(Manifest.TensorRecord(
                    name: tensor.name, file: fileName, dtype: tensor.outputDType.rawValue, shape: tensor.shape, xxh3_64: hasher.hexDigest()))
            }
        }
        // Page faults map neighbouring pages too ("fault-around"), including pages of tensors released
        // earlier; dropping every page of each input after each layer keeps them from piling up.
        for file in plan.inputFiles { file.mapping.releaseAll() }
        // No fsync of the shard here: after a killed process every written byte is in the file (on the
        // device or in the page cache), and after a power loss the resume re-hashes the partial shard
        // against the journal's prefix hash and refuses rather than continue from bytes that never
        // reached the disk.
        let layerJournal = { [finishedShards] in
            Journal(
                config_xxh3_128: configHash, inputs: inputs, tensors_done: layer.tensors.upperBound, shard: writer.shardIndex,
                shard_position: writer.position, shard_prefix_xxh3_128: writer.prefixHash(),
                finished_shards: finishedShards, tensor_hashes: records.all, layer_statistics: distiller?.statistics,
                layer_timings: distiller?.timings)
        }
        if let distiller {
            try pipeline.drain()
            try distiller.layerWritten(layer.key)
            journal = layerJournal()
            try journalWriter.save(journal)
            // The layer's cached activations go only once the journal no longer needs them for a resume.
            try journalWriter.finish()
            distiller.layerCommitted(layer.key)
            options.progress?(layerNumber + 1, plan.layers.count, writer.totalWritten)
        } else {
            // The journal is written behind the layer's last write, while the next layer merges.
            let progress = options.progress, layers = plan.layers.count
            pipeline.run {
                try journalWriter.save(layerJournal())
                progress?(layerNumber + 1, layers, writer.totalWritten)
            }
        }
        releaseFreedTensorMemory()
    }
    try pipeline.drain()
    let tensorHashes = records.all
    finishedShards.append(try writer.commit())
    try journalWriter.finish()

    var outputs = finishedShards
    if plan.shards.count > 1 { outputs.append(try writeIndex(plan, directory: out)) }
    outputs += try writeHeads(plan, directory: out)
    outputs += try copyModelFiles(plan, directory: out)

    let manifest = Manifest(
        tool: toolVersion, method: plan.config.methodName, seed: plan.config.seed,
        config_path: plan.config.path, config_xxh3_128: configHash, config: plan.config.canonicalText,
        inputs: try inputHashes.records(threads: workers), outputs: outputs.sorted { $0.path < $1.path }, tensors: tensorHashes,
        training: distiller?.training,
        layers: plan.layers.map {
            Manifest.LayerRecord(layer: $0.key.description, tensors: $0.tensors.count, distill: distiller?.statistics[$0.key.description])
        },
        run: Manifest.RunFigures(
            wall_seconds: Date().timeIntervalSince(start), peak_rss_bytes: peakResidentBytes(),
            bytes_read: plan.inputBytes, bytes_written: outputs.reduce(0) { $0 + $1.size },
            threads: options.threads, resumed: journalBefore != nil, distill_layers: distiller?.timings))
    try writeFileAtomically(out + "/" + Manifest.fileName, Array(try manifest.encoded()))
    try? fileManager.removeItem(atPath: out + "/.streammerge")
    if distiller != nil { try? fileManager.removeItem(atPath: scratch) }
    return manifest
}

/// Refuses a non-empty output directory unless forced or resuming; returns the journal when resuming.
private func prepareOutputDirectory(_ out: String, options: MergeOptions) throws -> Journal? {
    let fileManager = FileManager.default
    let existing = (try? fileManager.contentsOfDirectory(atPath: out)) ?? []
    if options.resume {
        guard let journal = try Journal.load(in: out) else {
            if fileManager.fileExists(atPath: out + "/" + Manifest.fileName) {
                throw MergeError.resume(path: out, detail: "the merge in this directory is already complete")
            }
            throw MergeError.resume(path: out, detail: "no journal (.streammerge/journal.json) to resume from")
        }
        return journal
    }
    if !existing.isEmpty {
        guard options.force else { throw MergeError.outputNotEmpty(path: out) }
        for entry in existing { try fileManager.removeItem(atPath: out + "/" + entry) }
    }
    try fileManager.createDirectory(atPath: out, withIntermediateDirectories: true)
    return nil
}

/// Size and modification time of every input: enough for `--resume` to notice a replaced input.
private func inputIdentities(_ plan: MergePlan) throws -> [Journal.InputIdentity] {
    try plan.inputFiles.map(\.path).map { path in
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        return Journal.InputIdentity(path: path, size: (attributes[.size] as? Int) ?? -1, modified: modified)
    }
}

/// Merges one tensor in windows of chunks: workers merge and convert to the output dtype in
/// parallel, and the pipeline writes and hashes the chunks in order. Returns the tensor's XXH3-64
/// hasher, complete once the pipeline has written the tensor.
private func mergeTensor(
    _ tensor: PlannedTensor, plan: MergePlan, pipeline: WritePipeline, workers: Int,
    workspaces: [MergeWorkspace], bytesOut: [UnsafeMutableRawPointer], inputs: InputWindow, inputHashes: InputHashes,
    mappedTensorBytes: Int
) throws -> XXH3Hasher {
    let hasher = XXH3Hasher(.bits64)
    let sources: [(SafetensorsFile, TensorInfo)] =
        (tensor.baseName.map { [plan.base!.tensor($0)!] } ?? []) + zip(plan.models, tensor.modelNames).map { $0.tensor($1)! }

    guard let parameters = tensor.parameters else {
        // Integer and bool tensors are carried through from the base byte for byte.
        try pipeline.drain()
        let (file, info) = sources[0]
        let raw = UnsafeRawBufferPointer(start: file.dataAddress(of: info), count: info.byteCount)
        for offset in stride(from: 0, to: raw.count, by: plan.chunkSize) {
            let piece = UnsafeRawBufferPointer(rebasing: raw[offset..<min(raw.count, offset + plan.chunkSize)])
            try pipeline.writer.write(piece)
            hasher.update(piece)
            inputHashes.advance([(file, info)], elements: offset / info.dtype.size..<(offset + piece.count) / info.dtype.size,
                                threads: 1) { _ in piece }
            file.mapping.releaseCovering(file.fileRange(of: info).lowerBound + offset ..< file.fileRange(of: info).lowerBound + offset + piece.count)
        }
        return hasher
    }

    // The merger's model nil is the base, input 0 when there is one; fine-tune i is input i + baseInputs.
    let baseInputs = tensor.baseName != nil ? 1 : 0
    let read: ChunkReader = { model, elements, destination in
        inputs.readFloats((model ?? -1) + baseInputs, elements: elements, into: destination)
    }
    let merger = TensorMerger(
        method: plan.config.method, parameters: parameters, elementCount: tensor.elementCount,
        canonicalName: tensor.canonicalName, seed: plan.config.seed, chunkSize: plan.chunkSize, read: read,
        readBFloat16: { model, elements in inputs.bfloat16Bits((model ?? -1) + baseInputs, elements: elements) },
        load: { elements in inputs.load(elements) }, holdChunks: { chunks in inputs.ring = chunks.map { $0 * plan.chunkSize } ?? inputs.capacity },
        observeRead: { elements, threads in
            inputHashes.advance(sources, elements: elements, threads: threads) { inputs.bytes($0, elements: elements) }
        })
    let window = bytesOut.count / MergePlan.outputWindows
    let outputSize = tensor.outputDType.size

    try inputs.begin(sources, mapped: plan.readsThroughMapping(tensor, mappedTensorBytes: mappedTensorBytes))
    merger.prepare(threads: workers, workspaces: workspaces, window: window)
    try inputs.rethrow()
    // `MergePlan.outputWindows` sets of output buffers: workers fill one window while the writer thread
    // drains the others, so computing and writing overlap. Each set is reused only after its previous
    // write finished.
    for (index, windowStart) in stride(from: 0, to: merger.chunkCount, by: window).enumerated() {
        let set = index % MergePlan.outputWindows
        pipeline.waitUntilDrained(set)
        try pipeline.rethrow()
        let inWindow = min(window, merger.chunkCount - windowStart)
        let destinations = Array(bytesOut[set * window..<set * window + inWindow])
        merger.mergeWindow(first: windowStart, count: inWindow, workspaces: workspaces, threads: workers) { slot, offset, values, count in
            convertFromFloat(destinations[slot] + offset * outputSize, from: values, dtype: tensor.outputDType, count: count)
        }
        try inputs.rethrow()
        inputs.release(windowStart * plan.chunkSize..<min(tensor.elementCount, (windowStart + inWindow) * plan.chunkSize))
        let pieces = (0..<inWindow).map { slot in
            UnsafeRawBufferPointer(start: destinations[slot], count: merger.chunkElementCount(windowStart + slot) * outputSize)
        }
        pipeline.write(pieces, hasher: hasher, set: set)
    }
    return hasher
}

/// Writes a tensor whose f32 values were computed whole (a trained block's), converting to the output
/// dtype a chunk at a time. Returns its XXH3-64 hasher.
private func writeTrainedTensor(
    _ values: Tensor, _ tensor: PlannedTensor, plan: MergePlan, pipeline: WritePipeline, bytes: UnsafeMutableRawPointer
) throws -> XXH3Hasher {
    precondition(values.count == tensor.elementCount, "\(tensor.name): trained values do not match the planned shape")
    try pipeline.drain()
    let hasher = XXH3Hasher(.bits64)
    for start in stride(from: 0, to: values.count, by: plan.chunkSize) {
        let count = min(plan.chunkSize, values.count - start)
        convertFromFloat(bytes, from: values.data + start, dtype: tensor.outputDType, count: count)
        let piece = UnsafeRawBufferPointer(start: bytes, count: count * tensor.outputDType.size)
        try pipeline.writer.write(piece)
        hasher.update(piece)
    }
    return hasher
}

/// The manifest's tensor records, appended on the pipeline's thread and read by the journal.
private final class TensorRecords: @unchecked Sendable {
    private let lock = NSLock()
    private var records: [Manifest.TensorRecord]

    init(_ records: [Manifest.TensorRecord]) { self.records = records }

    func append(_ record: Manifest.TensorRecord) { lock.withLock { records.append(record) } }

    var all: [Manifest.TensorRecord] { lock.withLock { records } }
}

/// Writes buffers in order on one background thread, hashing as it goes, and runs the work that must
/// follow them (tensor records, journals) in the same order. Holds the first error for the merging
/// thread to rethrow. Buffers belong to numbered sets; a set is reused only after `waitUntilDrained`.
private final class WritePipeline: @unchecked Sendable {
    let writer: ShardStreamWriter
    private let queue = DispatchQueue(label: "streammerge.writer")
    private let groups: [DispatchGroup]
    private let lock = NSLock()
    private var failure: Error?

    init(writer: ShardStreamWriter, sets: Int) {
        self.writer = writer
        groups = (0..<sets).map { _ in DispatchGroup() }
    }

    /// Writes `pieces` to the shard and into `hasher`, after everything queued before. The buffers
    /// belong to `set`: the caller leaves them alone until `waitUntilDrained(set)`.
    func write(_ pieces: [UnsafeRawBufferPointer], hasher: XXH3Hasher, set: Int) {
        let pieces = Spans(pieces)
        queue.async(group: groups[set]) { [self] in
            attempt {
                for piece in pieces.spans {
                    try writer.write(piece)
                    hasher.update(piece)
                }
            }
        }
    }

    /// Runs `work` after everything queued before.
    func run(_ work: @escaping () throws -> Void) {
        queue.async { [self] in attempt(work) }
    }

    private func attempt(_ work: () throws -> Void) {
        guard lock.withLock({ failure == nil }) else { return }
        do { try work() } catch { lock.withLock { failure = error } }
    }

    func waitUntilDrained(_ set: Int) { groups[set].wait() }

    /// Waits for everything queued and rethrows the first error.
    func drain() throws {
        queue.sync {}
        try rethrow()
    }

    func rethrow() throws {
        if let error = lock.withLock({ failure }) { throw error }
    }
}

/// Buffer spans handed to the writer thread, which alone reads them until their set is drained.
private struct Spans: @unchecked Sendable {
    let spans: [UnsafeRawBufferPointer]
    init(_ spans: [UnsafeRawBufferPointer]) { self.spans = spans }
}

/// `model.safetensors.index.json` for a sharded output.
private func writeIndex(_ plan: MergePlan, directory: String) throws -> Manifest.FileRecord {
    var weightMap: [String: String] = [:]
    for shard in plan.shards { for tensor in plan.tensors[shard.tensors] { weightMap[tensor.name] = shard.fileName } }
    let index: [String: Any] = ["metadata": ["total_size": plan.shards.reduce(0) { $0 + $1.layout.dataByteCount }], "weight_map": weightMap]
    let data = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    return try writeRecorded(directory, "model.safetensors.index.json", Array(data))
}

/// Writes `bytes` atomically under `directory/name` and returns its manifest record.
func writeRecorded(_ directory: String, _ name: String, _ bytes: [UInt8]) throws -> Manifest.FileRecord {
    try writeFileAtomically(directory + "/" + name, bytes)
    return Manifest.FileRecord(path: name, size: bytes.count, xxh3_128: bytes.withUnsafeBytes { xxh3_128Hex($0) })
}

/// Task-specific tensors of each fine-tune, copied unchanged into `heads/<model>.safetensors`.
private func writeHeads(_ plan: MergePlan, directory: String) throws -> [Manifest.FileRecord] {
    guard !plan.heads.isEmpty else { return [] }
    try FileManager.default.createDirectory(atPath: directory + "/heads", withIntermediateDirectories: true)
    return try plan.heads.map { head in
        let model = plan.models[head.modelIndex]
        let entries = head.names.map { model.tensor($0)! }
        let layout = SafetensorsLayout(entries.map { TensorSpec(name: $0.info.name, dtype: $0.info.dtype, shape: $0.info.shape) })
        var bytes = layout.headerBytes
        bytes.reserveCapacity(layout.fileSize)
        for (file, info) in entries {
            bytes.append(contentsOf: UnsafeRawBufferPointer(start: file.dataAddress(of: info), count: info.byteCount))
        }
        return try writeRecorded(directory, head.fileName, bytes)
    }
}

/// config.json (with `torch_dtype` set to the output dtype) and the tokenizer files of `tokenizer_source`.
private func copyModelFiles(_ plan: MergePlan, directory: String) throws -> [Manifest.FileRecord] {
    var records: [Manifest.FileRecord] = []
    let reference = plan.base ?? plan.models[0]
    if reference.directory != nil, var config = reference.config {
        if let dtype = plan.config.outputDType {
            config["torch_dtype"] = ["F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"][dtype.rawValue]
        }
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        records.append(try writeRecorded(directory, "config.json", Array(data)))
    }
    let tokenizerDirectory: String?
    switch plan.config.tokenizerSource {
    case nil, "base": tokenizerDirectory = reference.directory
    case let source?:
        let path = source.hasPrefix("model:") ? String(source.dropFirst(6)) : source
        guard let model = plan.models.first(where: { $0.path.hasSuffix(path) || URL(fileURLWithPath: $0.path).lastPathComponent == path }) else {
            throw MergeError.config(path: plan.config.path, detail: "tokenizer_source '\(source)' is neither 'base' nor one of the models")
        }
        tokenizerDirectory = model.directory
    }
    guard let tokenizerDirectory else { return records }
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                 "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json"] {
        guard let data = FileManager.default.contents(atPath: tokenizerDirectory + "/" + name) else { continue }
        records.append(try writeRecorded(directory, name, Array(data)))
    }
    return records
}
