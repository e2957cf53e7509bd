// SystemError: a failed system call, with the call, the path it concerned and errno.
import Glibc

/// A failed system call. Carries enough to print an actionable message: which call, on which file, and why.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let path: String
    public let errno: Int32

    public init(call: String, path: String, errno: Int32) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    public var description: String {
        "\(path): \(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}
