// Private BLAS shim: one row-major gemm<T> over whichever CBLAS the build found.
//
//  * scipy-openblas32 (the Python wheel's OpenBLAS): its cblas.h declares prefixed symbols
//    (scipy_cblas_sgemm, ...); the build passes -DBLAS_SYMBOL_PREFIX=scipy_ as its pkg-config says.
//  * Any other CBLAS with a cblas.h (ONNXDTD_HAVE_CBLAS_H): the plain cblas_* names.
//  * A BLAS found by CMake's FindBLAS without a usable header: the standard CBLAS prototypes are
//    declared here (LP64 integers; the enums are passed as int, which is the CBLAS ABI).
#pragma once

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#define ONNXDTD_BLAS_CAT2(a, b) a##b
#define ONNXDTD_BLAS_CAT(a, b) ONNXDTD_BLAS_CAT2(a, b)

#if defined(BLAS_SYMBOL_PREFIX) || defined(ONNXDTD_HAVE_CBLAS_H)

#include <cblas.h>
#if defined(BLAS_SYMBOL_PREFIX)
#define ONNXDTD_CBLAS(name) ONNXDTD_BLAS_CAT(BLAS_SYMBOL_PREFIX, name)
#else
#define ONNXDTD_CBLAS(name) name
#endif
#define ONNXDTD_ROW_MAJOR CblasRowMajor
#define ONNXDTD_TRANS(t) ((t) ? CblasTrans : CblasNoTrans)

#else  // no header: declare the routines with the reference CBLAS ABI

extern "C" {
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc);
void cblas_dgemm(int order, int trans_a, int trans_b, int m, int n, int k, double alpha,
                 const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc);
void cblas_sgemv(int order, int trans, int m, int n, float alpha, const float* a, int lda, const float* x,
                 int incx, float beta, float* y, int incy);
void cblas_dgemv(int order, int trans, int m, int n, double alpha, const double* a, int lda, const double* x,
                 int incx, double beta, double* y, int incy);
}
#define ONNXDTD_CBLAS(name) name
#define ONNXDTD_ROW_MAJOR 101
#define ONNXDTD_TRANS(t) ((t) ? 112 : 111)

#endif

namespace onnxdtd::blas {

// The BLAS's own thread count where it can be queried and set (OpenBLAS); -1 where unknown.
inline int threads() {
#if defined(ONNXDTD_BLAS_OPENBLAS)
    return ONNXDTD_CBLAS(openblas_get_num_threads)();
#else
    return -1;
#endif
}

// Returns whether the BLAS took the setting.
inline bool set_threads(int n) {
#if defined(ONNXDTD_BLAS_OPENBLAS)
    ONNXDTD_CBLAS(openblas_set_num_threads)(n);
    return true;
#else
    (void)n;
    return false;
#endif
}

// The BLAS takes 32-bit integers: refuse sizes beyond them rather than wrap around.
inline int to_int(int64_t v) {
    if (v < 0 || v > INT_MAX)
        throw std::length_error("onnxdtd: matrix dimension " + std::to_string(v) +
                                " exceeds the 32-bit BLAS interface");
    return static_cast<int>(v);
}

// The BLAS gemm itself (gemm below handles the edge cases).
inline void gemm_call(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                      const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                      int64_t ldc) {
    ONNXDTD_CBLAS(cblas_sgemm)(ONNXDTD_ROW_MAJOR, ONNXDTD_TRANS(trans_a), ONNXDTD_TRANS(trans_b),
                               to_int(m), to_int(n), to_int(k), alpha, a, to_int(lda), b,
                               to_int(ldb), beta, c, to_int(ldc));
}

inline void gemm_call(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                      const double* a, int64_t lda, const double* b, int64_t ldb, double beta, double* c,
                      int64_t ldc) {
    ONNXDTD_CBLAS(cblas_dgemm)(ONNXDTD_ROW_MAJOR, ONNXDTD_TRANS(trans_a), ONNXDTD_TRANS(trans_b),
                               to_int(m), to_int(n), to_int(k), alpha, a, to_int(lda), b,
                               to_int(ldb), beta, c, to_int(ldc));
}

// The BLAS gemv itself (gemv below zeroes y first where beta = 0).
inline void gemv_call(bool trans, int64_t rows, int64_t cols, float alpha, const float* a, int64_t lda,
                      const float* x, int64_t incx, float beta, float* y, int64_t incy) {
    ONNXDTD_CBLAS(cblas_sgemv)(ONNXDTD_ROW_MAJOR, ONNXDTD_TRANS(trans), to_int(rows), to_int(cols), alpha, a,
                               to_int(lda), x, to_int(incx), beta, y, to_int(incy));
}

inline void gemv_call(bool trans, int64_t rows, int64_t cols, double alpha, const double* a, int64_t lda,
                      const double* x, int64_t incx, double beta, double* y, int64_t incy) {
    ONNXDTD_CBLAS(cblas_dgemv)(ONNXDTD_ROW_MAJOR, ONNXDTD_TRANS(trans), to_int(rows), to_int(cols), alpha, a,
                               to_int(lda), x, to_int(incx), beta, y, to_int(incy));
}

// y = alpha * op(A) x + beta * y, A (rows x cols, row-major, leading dim lda); x and y strided.
// beta = 0 writes y without reading it (a BLAS may read it: NaN * 0 would stay NaN).
template <class T>
void gemv(bool trans, int64_t rows, int64_t cols, T alpha, const T* a, int64_t lda, const T* x, int64_t incx,
          T beta, T* y, int64_t incy) {
    if (beta == 0)
        for (int64_t i = 0, len = trans ? cols : rows; i < len; ++i) y[i * incy] = 0;
    gemv_call(trans, rows, cols, alpha, a, lda, x, incx, beta, y, incy);
}

// C (m x n, row-major, leading dim ldc) = alpha * op(A) (m x k) @ op(B) (k x n) + beta * C.
// A product with one row or one column goes to gemv: OpenBLAS's gemm would first copy (pack) the
// whole other matrix, which halves the memory bandwidth of these memory-bound products.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
    if (m == 0 || n == 0) return;
    if (k == 0) {  // C = beta * C: nothing for the BLAS to multiply (and lda = 0 would be illegal)
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0 ? T(0) : beta * c[i * ldc + j];
        return;
    }
    if (m == 1)  // c = op(B)^T a
        gemv(!trans_b, trans_b ? n : k, trans_b ? k : n, alpha, b, ldb, a, trans_a ? lda : 1, beta, c, 1);
    else if (n == 1)  // c = op(A) b
        gemv(trans_a, trans_a ? k : m, trans_a ? m : k, alpha, a, lda, b, trans_b ? 1 : ldb, beta, c, ldc);
    else
        gemm_call(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace onnxdtd::blas
