// CBLAS: OpenBLAS's cblas interface plus the few LAPACK routines we call.
#include <cblas.h>

// libopenblas exports LAPACK with the Fortran calling convention but ships no lapack.h:
// every argument by pointer, matrices column-major.
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info);
void spotrs_(const char *uplo, const int *n, const int *nrhs, const float *a, const int *lda,
             float *b, const int *ldb, int *info);
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dpotrs_(const char *uplo, const int *n, const int *nrhs, const double *a, const int *lda,
             double *b, const int *ldb, int *info);
