// MatrixProductTests: sgemm/dgemm cut into pieces across threads equal a naive loop and do not depend on the thread count.
import Testing
import TensorKernels
import TestSupport

@Suite("Matrix products split across threads")
struct MatrixProductTests {
    /// (M, N, K): large enough to be cut, along the rows (M ≥ N) and along the columns.
    static let shapes = [(600, 40, 64), (40, 600, 64)]

    @Test("sgemm: every transpose, cut by rows or by columns, equals a naive loop; 1 and 2 threads give equal bits",
          arguments: [(false, false), (true, false), (false, true), (true, true)])
    func sgemmPieces(transposeA: Bool, transposeB: Bool) {
        for (M, N, K) in Self.shapes {
            let a = testValues(M * K, seed: 31), b = testValues(K * N, seed: 32), start = testValues(M * N, seed: 33)
            func product(threads: Int) -> [Float] {
                setKernelThreads(threads)
                var c = start
                sgemm(&c, a, b, M: M, N: N, K: K, transposeA: transposeA, transposeB: transposeB, alpha: 1.5, beta: 0.5)
                return c
            }
            let one = product(threads: 1), two = product(threads: 2)
            #expect(one == two, "\(M)×\(N)×\(K)")
            var worst = 0.0
            for i in 0..<M {
                for j in 0..<N {
                    var sum = 0.0
                    for k in 0..<K {
                        sum += Double(transposeA ? a[k * M + i] : a[i * K + k]) * Double(transposeB ? b[j * K + k] : b[k * N + j])
                    }
                    worst = max(worst, abs(Double(two[i * N + j]) - (1.5 * sum + 0.5 * Double(start[i * N + j]))))
                }
            }
            #expect(worst < 1e-4, "\(M)×\(N)×\(K)")
        }
    }

    @Test("dgemm cut by rows and by columns equals a naive loop; 1 and 2 threads give equal bits")
    func dgemmPieces() {
        for (M, N, K) in Self.shapes {
            let a = testValues(K * M, seed: 34).map(Double.init), b = testValues(K * N, seed: 35).map(Double.init)
            func product(threads: Int) -> [Double] {
                setKernelThreads(threads)
                var c = [Double](repeating: 1, count: M * N)
                dgemm(&c, a, b, M: M, N: N, K: K, transposeA: true, beta: 1)
                return c
            }
            let one = product(threads: 1), two = product(threads: 2)
            #expect(one == two)
            var worst = 0.0
            for i in 0..<M {
                for j in 0..<N {
                    let sum = (0..<K).reduce(1.0) { $0 + a[$1 * M + i] * b[$1 * N + j] }
                    worst = max(worst, abs(two[i * N + j] - sum))
                }
            }
            #expect(worst < 1e-10)
        }
    }
}
