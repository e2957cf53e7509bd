// BlockMerger: what a data-driven method offers the executor — merged blocks, one at a time, over an activation cache.
import ModelArchitectures

/// A data-driven method that merges transformer blocks in order, keeping per-example activations in
/// the scratch directory between blocks. The executor writes each block it returns, then calls
/// `advance` (next block's inputs), journals, and calls `removeInputs`.
public protocol BlockMerger: AnyObject {
    /// Whether block `layer`'s cached inputs are all present (false before the first block).
    func hasInputs(forBlock layer: Int) -> Bool
    /// Computes block 0's inputs from the embeddings.
    func prepareEmbeddings() throws
    /// Merges block `layer`: its weights by local name (f32, as they will be written) and figures.
    func mergeBlock(_ layer: Int, progress: DistillProgress?) throws
        -> (weights: LayerWeights, statistics: DistillLayerStatistics?, timing: DistillLayerTiming)
    /// Computes block l+1's inputs that depend on the merged block.
    func advance(_ layer: Int, merged: LayerWeights) throws -> CacheFigures
    /// Deletes block `layer`'s inputs.
    func removeInputs(ofBlock layer: Int)
}

extension ProDistill: BlockMerger {
    public func mergeBlock(_ layer: Int, progress: DistillProgress?) throws
        -> (weights: LayerWeights, statistics: DistillLayerStatistics?, timing: DistillLayerTiming) {
        let (weights, statistics, timing) = try trainBlock(layer, progress: progress)
        return (weights, statistics, timing)
    }
}
