// FastMathTests: the vectorisable exp and erf against glibc's expf/erff over their whole ranges.
import Foundation
import Testing
import TensorKernels

@Suite("Fast exp and erf")
struct FastMathTests {
    /// Distance in units in the last place between two finite floats of the same sign.
    func ulps(_ a: Float, _ b: Float) -> Int { abs(Int(a.bitPattern) - Int(b.bitPattern)) }

    @Test("fastExp is within 2 ulp of expf from −104 to 88.7, denormal results included")
    func exp() {
        var worst = 0
        var x: Float = -103.9
        while x < 88.72 {
            let expected = Foundation.exp(x)
            // Denormal results carry fewer significant bits: compare them absolutely.
            if expected < Float.leastNormalMagnitude {
                #expect(abs(fastExp(x) - expected) <= 2 * Float.leastNonzeroMagnitude, "x = \(x)")
            } else {
                worst = max(worst, ulps(fastExp(x), expected))
            }
            x += 0.000731
        }
        #expect(worst <= 2)
    }

    @Test("fastExp's edge values: exact at 0, 0 far below, +∞ above, NaN through")
    func expEdges() {
        #expect(fastExp(0) == 1)
        #expect(fastExp(-Float.infinity) == 0)
        #expect(fastExp(-Float.greatestFiniteMagnitude) == 0)
        #expect(fastExp(-200) == 0)
        #expect(ulps(fastExp(88.72), Foundation.exp(Float(88.72))) <= 2)
        #expect(fastExp(89) == .infinity)
        #expect(fastExp(.infinity) == .infinity)
    }

    @Test("fastErf is within 5e-7 of erff (the formula's 1.5e-7 plus f32 rounding), odd, and saturates at ±1")
    func erf() {
        var worst: Float = 0
        var x: Float = -6
        while x < 6 {
            worst = max(worst, abs(fastErf(x) - Foundation.erf(x)))
            #expect(fastErf(-x) == -fastErf(x))
            x += 0.000377
        }
        #expect(worst < 5e-7)
        #expect(fastErf(12) == 1 && fastErf(-12) == -1)
        #expect(fastErf(.infinity) == 1)
    }
}
