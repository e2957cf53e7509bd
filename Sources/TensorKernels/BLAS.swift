// BLAS: the only file that touches OpenBLAS — row-major sgemm/dgemm, Cholesky solves, threads and kernel selection.
import CBLAS
import Foundation

/// C (M×N) = alpha · op(A) · op(B) + beta · C, row-major, where op(A) is M×K and op(B) is K×N.
/// Leading dimensions default to contiguous storage; attention passes wider ones to address one
/// head inside a [tokens, heads × headDim] activation without copying it out.
/// Every matrix product in the kernels goes through here. The C function is `cblas_sgemm`.
public func sgemm(
    _ c: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
    M: Int, N: Int, K: Int, transposeA: Bool = false, transposeB: Bool = false, alpha: Float = 1, beta: Float = 0,
    lda: Int? = nil, ldb: Int? = nil, ldc: Int? = nil
) {
    guard M > 0, N > 0 else { return }
    cblas_sgemm(
        CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
        Int32(M), Int32(N), Int32(K), alpha, a, Int32(lda ?? (transposeA ? M : K)), b, Int32(ldb ?? (transposeB ? K : N)),
        beta, c, Int32(ldc ?? N))
}

/// Sets the number of threads OpenBLAS uses. The C function is `openblas_set_num_threads`.
public func setBLASThreads(_ count: Int) {
    openblas_set_num_threads(Int32(max(1, count)))
}

/// C (M×N) = alpha · op(A) · op(B) + beta · C in double, row-major: RegMean's Gram matrices and
/// solves run in double. The C function is `cblas_dgemm`.
public func dgemm(
    _ c: UnsafeMutablePointer<Double>, _ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>,
    M: Int, N: Int, K: Int, transposeA: Bool = false, transposeB: Bool = false, alpha: Double = 1, beta: Double = 0
) {
    guard M > 0, N > 0 else { return }
    cblas_dgemm(
        CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
        Int32(M), Int32(N), Int32(K), alpha, a, Int32(transposeA ? M : K), b, Int32(transposeB ? K : N), beta, c, Int32(N))
}

/// Solves A·X = B for symmetric positive definite A (n×n, overwritten by its Cholesky factor) and
/// `rhs` right-hand sides stored column by column in `b` (overwritten by X). Returns LAPACK's info:
/// 0 on success, k > 0 when A is not positive definite. The Fortran routines are `dpotrf_`/`dpotrs_`.
public func choleskySolve(_ a: UnsafeMutablePointer<Double>, n: Int, _ b: UnsafeMutablePointer<Double>, rhs: Int) -> Int {
    var uplo = CChar(UInt8(ascii: "L")), size = Int32(n), count = Int32(rhs), info: Int32 = 0
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
