// BLAS: the only file that touches OpenBLAS — row-major sgemm/dgemm, Cholesky solves, threads and kernel selection.
import CBLAS
import Foundation

/// OpenBLAS runs single-threaded: the kernels split products themselves (`gemmPieces`). OpenBLAS's
/// own workers spin (sched_yield) for ~0.1 s after every threaded call, so on a small machine they
/// stole a core from the elementwise kernels and the optimizer that run between products.
private let openBLASSingleThreaded: Void = openblas_set_num_threads(1)

/// The output rows (if `M ≥ N`, else columns) of one product, cut into pieces that the kernel
/// threads share. The cut depends only on the shape, never on the thread count, so every output
/// element comes from the same OpenBLAS call with any number of threads: results are identical.
/// Products under 2²⁰ multiply-adds stay whole.
private func gemmPieces(M: Int, N: Int, K: Int) -> [Range<Int>] {
    let length = max(M, N), piece = 128
    guard M * N * K >= 1 << 20, length >= 2 * piece else { return [0..<length] }
    return stride(from: 0, to: length, by: piece).map { $0..<min(length, $0 + piece) }
}

/// Calls `body(m, n, aOffset, bOffset, cOffset)` for every piece of an M×N product (one piece when
/// `split` is false), spread over the kernel threads: a row piece of C takes the same rows of op(A),
/// a column piece the same columns of op(B); offsets are in elements.
private func forEachPiece(
    M: Int, N: Int, K: Int, transposeA: Bool, transposeB: Bool, lda: Int, ldb: Int, ldc: Int, split: Bool,
    _ body: (_ m: Int, _ n: Int, _ aOffset: Int, _ bOffset: Int, _ cOffset: Int) -> Void
) {
    let pieces = split ? gemmPieces(M: M, N: N, K: K) : [0..<max(M, N)]
    parallelFor(pieces.count) { index in
        let r = pieces[index]
        if M >= N {
            body(r.count, N, transposeA ? r.lowerBound : r.lowerBound * lda, 0, r.lowerBound * ldc)
        } else {
            body(M, r.count, 0, transposeB ? r.lowerBound * ldb : r.lowerBound, r.lowerBound)
        }
    }
}

/// C (M×N) = alpha · op(A) · op(B) + beta · C, row-major, where op(A) is M×K and op(B) is K×N.
/// Leading dimensions default to contiguous storage; attention passes wider ones to address one
/// head inside a [tokens, heads × headDim] activation without copying it out. `split` false keeps
/// the product on the calling thread (attention already runs its heads in parallel).
/// Every matrix product in the kernels goes through here. The C function is `cblas_sgemm`.
public func sgemm(
    _ c: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
    M: Int, N: Int, K: Int, transposeA: Bool = false, transposeB: Bool = false, alpha: Float = 1, beta: Float = 0,
    lda: Int? = nil, ldb: Int? = nil, ldc: Int? = nil, split: Bool = true
) {
    guard M > 0, N > 0 else { return }
    _ = openBLASSingleThreaded
    let lda = lda ?? (transposeA ? M : K), ldb = ldb ?? (transposeB ? K : N), ldc = ldc ?? N
    forEachPiece(M: M, N: N, K: K, transposeA: transposeA, transposeB: transposeB, lda: lda, ldb: ldb, ldc: ldc, split: split) {
        m, n, aOffset, bOffset, cOffset in
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(K), alpha, a + aOffset, Int32(lda), b + bOffset, Int32(ldb), beta, c + cOffset, Int32(ldc))
    }
}

/// C (M×N) = alpha · op(A) · op(B) + beta · C in double, row-major: RegMean's Gram matrices and
/// solves run in double. The C function is `cblas_dgemm`.
public func dgemm(
    _ c: UnsafeMutablePointer<Double>, _ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>,
    M: Int, N: Int, K: Int, transposeA: Bool = false, transposeB: Bool = false, alpha: Double = 1, beta: Double = 0
) {
    guard M > 0, N > 0 else { return }
    _ = openBLASSingleThreaded
    let lda = transposeA ? M : K, ldb = transposeB ? K : N
    forEachPiece(M: M, N: N, K: K, transposeA: transposeA, transposeB: transposeB, lda: lda, ldb: ldb, ldc: N, split: true) {
        m, n, aOffset, bOffset, cOffset in
        cblas_dgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(K), alpha, a + aOffset, Int32(lda), b + bOffset, Int32(ldb), beta, c + cOffset, Int32(N))
    }
}

/// Solves A·X = B for symmetric positive definite A (n×n, overwritten by its Cholesky factor) and
/// `rhs` right-hand sides stored column by column in `b` (overwritten by X). Returns LAPACK's info:
/// 0 on success, k > 0 when A is not positive definite. The Fortran routines are `dpotrf_`/`dpotrs_`.
public func choleskySolve(_ a: UnsafeMutablePointer<Double>, n: Int, _ b: UnsafeMutablePointer<Double>, rhs: Int) -> Int {
    var uplo = CChar(UInt8(ascii: "L")), size = Int32(n), count = Int32(rhs), info: Int32 = 0
    // One blocked factorisation per call, rare (once per tensor per layer): OpenBLAS threads it.
    _ = openBLASSingleThreaded
    openblas_set_num_threads(Int32(kernelThreads))
    defer { openblas_set_num_threads(1) }
    dpotrf_(&uplo, &size, a, &size, &info)
    guard info == 0 else { return Int(info) }
    dpotrs_(&uplo, &size, &count, a, &size, b, &size, &info)
    return Int(info)
}

/// The kernel family OpenBLAS picked for this CPU (e.g. "skylakex", "haswell", "prescott").
/// The C function is `openblas_get_corename`.
public func openBLASCoreName() -> String {
    openblas_get_corename().map { String(cString: $0) } ?? "unknown"
}

/// OpenBLAS picks its kernels once, when the library loads, from the CPU model. Debian 12's 0.3.21
/// predates Sapphire/Emerald Rapids and falls back to its generic SSE3 "Prescott" kernels on them:
/// sgemm ran at 55 GFLOP/s instead of 290 on 2 cores of this machine kind. When that happened and the
/// CPU has AVX-512 (or AVX2), this sets `OPENBLAS_CORETYPE` and re-executes the process so the library
/// loads with the right kernels. Does nothing if the variable is already set (the user's choice wins).
public func relaunchWithNativeBLASKernelsIfNeeded() {
    guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil,
          ["prescott", "core2", "penryn", "dunnington", "nehalem", "unknown"].contains(openBLASCoreName().lowercased()),
          let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return }
    let flags = Set(flagsLine.split(separator: " ").map(String.init))
    let core: String
    if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq"]) {
        core = "SkylakeX"
    } else if flags.isSuperset(of: ["avx2", "fma"]) {
        core = "Haswell"
    } else {
        return
    }
    setenv("OPENBLAS_CORETYPE", core, 1)
    execv("/proc/self/exe", CommandLine.unsafeArgv)
    // execv returns only on failure: carry on with the generic kernels.
}
