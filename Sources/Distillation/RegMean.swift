// RegMean: each linear layer solved in closed form from the fine-tunes' Gram matrices of its inputs; other tensors averaged.
import Foundation
import ModelArchitectures
import SafetensorsFormat
import TensorKernels

/// RegMean (DESIGN.md §7): for every linear layer, Gᵢ = XᵢᵀXᵢ/Nᵢ over the real tokens of fine-tune i's
/// own activations on its calibration examples; G̃ᵢ = α·Gᵢ + (1−α)·diag(Gᵢ);
/// W* = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢ Wᵢᵀ, transposed back — in double, by Cholesky. Every other tensor is the mean
/// of the fine-tunes. Only each fine-tune's own activations are needed, so the cache holds the
/// teacher path alone (`L<l>-t<i>-teacher.smac`), written block by block.
public final class RegMean: BlockMerger {
    let alpha: Double
    let architecture: Architecture
    let fineTunes: [LayerReader]
    let cache: CalibrationCache

    public init(settings: DistillSettings, architecture: Architecture, fineTunes: [LayerReader],
                calibration: [[TokenizedExample]], calibrationPaths: [String], scratch: String) throws {
        alpha = settings.alpha
        self.architecture = architecture
        self.fineTunes = fineTunes
        cache = try CalibrationCache(settings: settings, architecture: architecture, calibration: calibration,
                                     calibrationPaths: calibrationPaths, scratch: scratch)
    }

    public func hasInputs(forBlock layer: Int) -> Bool { cache.exists(layer: layer, tasks: fineTunes.count, [.teacher]) }

    public func prepareEmbeddings() throws {
        for task in fineTunes.indices { try cache.writeEmbeddings(task: task, weights: fineTunes[task].read(.embeddings), .teacher) }
    }

    public func mergeBlock(_ layer: Int, progress: DistillProgress?) throws
        -> (weights: LayerWeights, statistics: DistillLayerStatistics?, timing: DistillLayerTiming) {
        let started = Date()
        var figures = CacheFigures()
        // Σᵢ G̃ᵢ per distinct linear input and Σᵢ Wᵢ·G̃ᵢ per weight ([out, in], row-major), in double.
        var gramSums: [String: UnsafeMutablePointer<Double>] = [:], products: [String: UnsafeMutablePointer<Double>] = [:]
        var shapes: [String: (out: Int, in: Int)] = [:]
        var groupOf: [String: String] = [:]
        defer { (Array(gramSums.values) + Array(products.values)).forEach { $0.deallocate() } }
        var means: [String: Tensor] = [:]

        for task in fineTunes.indices {
            let weights = fineTunes[task].read(.block(layer))
            let block = try architecture.block(weights)
            var grams: [String: UnsafeMutablePointer<Double>] = [:]
            var tokens = 0
            defer { grams.values.forEach { $0.deallocate() } }
            figures += try cache.propagate(block, layer: layer, task: task, .teacher) { tape, batch in
                let real = (0..<batch.rows).filter { batch.attentionMask[$0] == 1 }
                tokens += real.count
                for (names, x) in block.linearInputs(tape) {
                    let width = x.shape[1], key = names[0]
                    for name in names { groupOf[name] = key }
                    let gram = grams[key] ?? {
                        let g = UnsafeMutablePointer<Double>.allocate(capacity: width * width)
                        g.initialize(repeating: 0, count: width * width)
                        grams[key] = g
                        return g
                    }()
                    // Real tokens' rows in double, then G += XᵀX.
                    let rows = UnsafeMutablePointer<Double>.allocate(capacity: max(real.count, 1) * width)
                    defer { rows.deallocate() }
                    for (r, row) in real.enumerated() {
                        for c in 0..<width { rows[r * width + c] = Double(x.data[row * width + c]) }
                    }
                    dgemm(gram, rows, rows, M: width, N: width, K: real.count, transposeA: true, beta: 1)
                }
            }

            for (key, gram) in grams {
                let width = weights.tensors[key]!.shape[1]
                // Gᵢ = XᵀX/N, then G̃ᵢ = α·G + (1−α)·diag(G): off-diagonal entries scaled by α.
                for i in 0..<width {
                    for j in 0..<width {
                        gram[i * width + j] = gram[i * width + j] / Double(tokens) * (i == j ? 1 : alpha)
                    }
                }
                let sum = gramSums[key] ?? {
                    let s = UnsafeMutablePointer<Double>.allocate(capacity: width * width)
                    s.initialize(repeating: 0, count: width * width)
                    gramSums[key] = s
                    return s
                }()
                for i in 0..<width * width { sum[i] += gram[i] }
                for (name, group) in groupOf where group == key {
                    let w = weights.tensors[name]!, (out, width) = (w.shape[0], w.shape[1])
                    shapes[name] = (out, width)
                    let wd = UnsafeMutablePointer<Double>.allocate(capacity: out * width)
                    defer { wd.deallocate() }
                    for i in 0..<out * width { wd[i] = Double(w.data[i]) }
                    let product = products[name] ?? {
                        let p = UnsafeMutablePointer<Double>.allocate(capacity: out * width)
                        p.initialize(repeating: 0, count: out * width)
                        products[name] = p
                        return p
                    }()
                    dgemm(product, wd, gram, M: out, N: width, K: width, beta: 1)
                }
            }
            // Every other tensor: the mean, accumulated as the data-free linear merge does.
            for (name, tensor) in weights.tensors where groupOf[name] == nil {
                let acc = means[name] ?? Tensor(shape: tensor.shape)
                for i in 0..<tensor.count { acc.data[i] = acc.data[i] + 1 * tensor.data[i] }
                means[name] = acc
            }
            for file in fineTunes[task].source.files { file.mapping.releaseAll() }
        }
        let total = Float(fineTunes.count)
        for tensor in means.values { for i in 0..<tensor.count { tensor.data[i] = tensor.data[i] / total } }

        var merged = means
        for (name, (out, width)) in shapes {
            let a = UnsafeMutablePointer<Double>.allocate(capacity: width * width)
            defer { a.deallocate() }
            a.update(from: gramSums[groupOf[name]!]!, count: width * width)
            // Σ Wᵢ·G̃ᵢ row-major [out, in] is, read column-major, the n×out right-hand side (Σ G̃ᵢ Wᵢᵀ);
            // the solution read back row-major is W* [out, in].
            let b = products[name]!
            let info = choleskySolve(a, n: width, b, rhs: out)
            guard info == 0 else {
                throw ArchitectureError.badInput(
                    path: cache.scratch, detail: "block \(layer) \(name): the summed Gram matrix is not positive definite (LAPACK info \(info)); use more calibration examples or a smaller alpha")
            }
            let w = Tensor(shape: [out, width])
            for i in 0..<out * width { w.data[i] = Float(b[i]) }
            merged[name] = w
        }
        return (LayerWeights(tensors: merged, origin: "regmean block \(layer)"), nil,
                DistillLayerTiming(layer: LayerKey.block(layer).description, seconds: Date().timeIntervalSince(started),
                                   cache_seconds: figures.seconds, cache_raw_bytes: figures.raw, cache_stored_bytes: figures.stored))
    }

    /// The teachers' outputs for block l+1 are written while merging block l; nothing depends on the merge.
    public func advance(_ layer: Int, merged: LayerWeights) throws -> CacheFigures { CacheFigures() }

    public func removeInputs(ofBlock layer: Int) { cache.remove(layer: layer, tasks: fineTunes.count, [.teacher]) }
}
