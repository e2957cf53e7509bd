// Parallel: how many threads the kernels use, and a loop over independent items spread across them.
import Dispatch
import Foundation

/// Threads for the kernels' loops and matrix products: one per core until `setKernelThreads`.
nonisolated(unsafe) private(set) var kernelThreads = ProcessInfo.processInfo.activeProcessorCount

/// Sets the threads the kernels may use: a run's `--threads`.
public func setKernelThreads(_ count: Int) {
    kernelThreads = max(1, count)
}

/// Calls `body(i)` for every i in 0..<count, items spread over the kernel threads. Items must be
/// independent (each writes only its own outputs), so results do not depend on the thread count.
func parallelFor(_ count: Int, _ body: (Int) -> Void) {
    let workers = min(kernelThreads, count)
    guard workers > 1 else {
        for i in 0..<count { body(i) }
        return
    }
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
        for i in stride(from: worker, to: count, by: workers) { body(i) }
    }
}
