// Embedding: row lookup in a [vocab, C] table — forward gathers, backward scatters into the table's gradient.

/// out (N, C) += table[ids[n]] — accumulating, so word, position and token-type embeddings sum in place.
/// Ids must already be checked against the vocabulary (the model loader does, naming the example).
public func embeddingForward(_ out: UnsafeMutablePointer<Float>, ids: UnsafePointer<Int32>, table: UnsafePointer<Float>, N: Int, C: Int) {
    for n in 0..<N {
        let row = table + Int(ids[n]) * C, y = out + n * C
        for i in 0..<C { y[i] += row[i] }
    }
}

/// dtable[ids[n]] += dout (N, C), in token order so the sums are deterministic.
public func embeddingBackward(dtable: UnsafeMutablePointer<Float>, dout: UnsafePointer<Float>, ids: UnsafePointer<Int32>, N: Int, C: Int) {
    for n in 0..<N {
        let row = dtable + Int(ids[n]) * C, dy = dout + n * C
        for i in 0..<C { row[i] += dy[i] }
    }
}
