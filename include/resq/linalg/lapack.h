// The LAPACK routines resq calls (dsyevd, dpotrf, dtrtri), declared once, with C++ wrappers.
// Why not LAPACKE: liblapacke is a thin C layer over liblapack that must match it exactly; a GPU
// image with its own LAPACKE (3.12) against Debian's LAPACK (3.11) fails to link. Calling the
// Fortran symbols ourselves needs only liblapack (CMake's find_package(LAPACK)), any version.
// Column-major, LP64 (32-bit integers: Debian's, Ubuntu's and OpenBLAS's default liblapack.so.3).
#pragma once

#include <cstddef>
#include <vector>

// Fortran calling convention as gfortran emits it: every argument by pointer, a trailing
// hidden length (size_t since gfortran 8) per CHARACTER argument, in argument order. Omitting them
// is undefined behaviour that has crashed callers once gfortran turns LAPACK's inner calls into
// tail calls, which reuse the caller's (missing) stack arguments.
extern "C" {
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
             double* work, const int* lwork, int* iwork, const int* liwork, int* info, std::size_t jobz_len,
             std::size_t uplo_len);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, std::size_t uplo_len);
void dtrtri_(const char* uplo, const char* diag, const int* n, double* a, const int* lda, int* info,
             std::size_t uplo_len, std::size_t diag_len);
}

namespace resq::lapack {

// LAPACK's integer (LP64).
using Int = int;

// Eigenvalues w[n] (ascending) and, for jobz 'V', eigenvectors (overwriting a) of the symmetric
// n x n column-major matrix a, of which the `uplo` ('L'/'U') triangle is read. Queries the optimal
// workspace first and allocates it, as LAPACKE_dsyevd does. Returns LAPACK's info: 0 ok, < 0 the
// -info-th argument was illegal, > 0 the eigenvalue iteration did not converge.
inline Int dsyevd(char jobz, char uplo, Int n, double* a, Int lda, double* w) {
  Int info = 0;
  double work_query = 0.0;
  Int iwork_query = 0;
  const Int query = -1;
  dsyevd_(&jobz, &uplo, &n, a, &lda, w, &work_query, &query, &iwork_query, &query, &info, 1, 1);
  if (info != 0) return info;
  const Int lwork = static_cast<Int>(work_query);
  const Int liwork = iwork_query;
  std::vector<double> work(static_cast<std::size_t>(lwork > 0 ? lwork : 1));
  std::vector<Int> iwork(static_cast<std::size_t>(liwork > 0 ? liwork : 1));
  dsyevd_(&jobz, &uplo, &n, a, &lda, w, work.data(), &lwork, iwork.data(), &liwork, &info, 1, 1);
  return info;
}

// Cholesky factorization in place of the symmetric positive definite column-major a: the `uplo`
// triangle becomes L (a = L Lᵀ) or U (a = Uᵀ U); the other triangle is not touched. Returns info:
// 0 ok, > 0 the leading minor of that order is not positive definite.
inline Int dpotrf(char uplo, Int n, double* a, Int lda) {
  Int info = 0;
  dpotrf_(&uplo, &n, a, &lda, &info, 1);
  return info;
}

// Inverse in place of the column-major triangular a (`uplo` 'L'/'U', `diag` 'N' non-unit or 'U'
// unit). Returns info: 0 ok, > 0 a[info-1, info-1] is exactly zero (singular).
inline Int dtrtri(char uplo, char diag, Int n, double* a, Int lda) {
  Int info = 0;
  dtrtri_(&uplo, &diag, &n, a, &lda, &info, 1, 1);
  return info;
}

}  // namespace resq::lapack
