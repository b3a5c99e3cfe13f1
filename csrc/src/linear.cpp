// Rule passes through linear layers: conv_group (grouped N-D convolution over im2col columns)
// and dense_group, each as GEMMs plus fused elementwise loops.
//
// Numerics follow the numpy reference (onnxdtd/backends/numpy_backend.py) operation by operation:
//   D = 0;  D += T(sign_t) * (W_t @ cols_t + b_t)        per term, in term order
//   S = R / stab(D)  [* T(z > 0) / T(z < 0)]
//   grad_t = col2im(W_t^T @ S)                           kernel offsets added in row-major order
//   out += (T(coeff * sign_t) * x_t) * grad_t
// so the results differ from it only by the summation order inside the GEMMs.
#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "blas.hpp"
#include "common.hpp"
#include "onnxdtd/kernels.hpp"

namespace onnxdtd {
namespace {

using detail::for_each_run;
using detail::Geo;
using detail::kParallelMin;
using detail::stab;

// The im2col column buffer stays under this many bytes (unless a single output row needs more):
// tiles that stay in the last-level cache between im2col and the GEMM. Measured on a 2-core AVX2
// machine, 8-16 MiB beat both smaller tiles (more, smaller GEMMs) and 64 MiB (page faults, DRAM).
constexpr int64_t kColumnBudget = int64_t(16) << 20;

// cols (C*K rows x (q1-q0) columns) <- the receptive field of every output position q in [q0, q1).
template <class T>
void im2col(const Geo& g, int64_t C, const T* x, bool bcast, int64_t q0, int64_t q1, T* cols) {
    const int64_t K = g.kernel_elems(), IS = g.in_elems(), ncols = q1 - q0, rows = C * K;
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (rows * ncols > kParallelMin))
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t c = r / K, k = r % K, ky = k / g.kw, kx = k % g.kw;
        T* dst = cols + r * ncols;
        for_each_run(g, q0, q1, [&](int64_t n, int64_t oy, int64_t ox, int64_t len, int64_t j) {
            T* d = dst + j;
            const int64_t iy = g.iy(oy, ky);
            if (iy < 0 || iy >= g.ih) {
                std::fill(d, d + len, T(0));
                return;
            }
            const T* row = x + ((bcast ? 0 : n) * C + c) * IS + iy * g.iw;
            int64_t ix = g.ix(ox, kx);
            if (g.sw == 1 && ix >= 0 && ix + len <= g.iw) {
                std::memcpy(d, row + ix, sizeof(T) * len);
                return;
            }
            for (int64_t i = 0; i < len; ++i, ix += g.sw) d[i] = (ix >= 0 && ix < g.iw) ? row[ix] : T(0);
        });
    }
}

// grad (samples n0.., C, *in) += the columns scattered back onto the input positions they read.
// Per input element the kernel offsets add up in row-major order, as in the numpy reference.
template <class T>
void col2im(const Geo& g, int64_t C, const T* cols, int64_t q0, int64_t q1, int64_t n0, T* grad) {
    const int64_t K = g.kernel_elems(), IS = g.in_elems(), P = g.out_elems(), ncols = q1 - q0;
    const int64_t na = q0 / P, nb = (q1 - 1) / P + 1;  // samples touched: [na, nb)
    const int64_t planes = (nb - na) * C;
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (planes > 1 && K * ncols > kParallelMin))
    for (int64_t pl = 0; pl < planes; ++pl) {
        const int64_t n = na + pl / C, c = pl % C;
        const int64_t a = std::max(q0, n * P), b = std::min(q1, (n + 1) * P);
        T* plane = grad + ((n - n0) * C + c) * IS;
        for (int64_t k = 0; k < K; ++k) {
            const int64_t ky = k / g.kw, kx = k % g.kw;
            const T* src = cols + (c * K + k) * ncols + (a - q0);  // column of position a
            for_each_run(g, a, b, [&](int64_t, int64_t oy, int64_t ox, int64_t len, int64_t j) {
                const int64_t iy = g.iy(oy, ky);
                if (iy < 0 || iy >= g.ih) return;
                T* row = plane + iy * g.iw;
                const T* s = src + j;
                int64_t ix = g.ix(ox, kx);
                for (int64_t i = 0; i < len; ++i, ix += g.sw)
                    if (ix >= 0 && ix < g.iw) row[ix] += s[i];
            });
        }
    }
}

// S = R / stab(D), then masked by the sign of z. S may alias D.
template <class T>
void quotient(int64_t size, const T* R, const T* D, const T* z, int mask, double stabilizer, T* S) {
    const T eps = static_cast<T>(stabilizer);
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (size > kParallelMin))
    for (int64_t i = 0; i < size; ++i) {
        T s = R[i] / stab(D[i], eps);
        if (mask > 0)
            s = s * static_cast<T>(z[i] > T(0));
        else if (mask < 0)
            s = s * static_cast<T>(z[i] < T(0));
        S[i] = s;
    }
}

// C = op(A) @ op(B), split into blocks of rows or columns over the OpenMP threads when the BLAS runs
// single-threaded (onnxdtd._core makes its private OpenBLAS so): then one thread pool does all the
// work, instead of the BLAS's threads spinning against the OpenMP ones between calls.
template <class T>
void par_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
              int64_t ldb, T* c, int64_t ldc) {
    const int nt = detail::thread_count();
    const bool split_n = n >= m;
    const int64_t total = split_n ? n : m;
    const int64_t parts = std::min<int64_t>(nt, total / 64);
    if (parts < 2 || blas::threads() != 1 || double(m) * double(n) * double(k) < double(1 << 21)) {
        blas::gemm(ta, tb, m, n, k, T(1), a, lda, b, ldb, T(0), c, ldc);
        return;
    }
    for (int64_t v : {m, n, k, lda, ldb, ldc}) blas::to_int(v);  // throw here, not inside the region
    ONNXDTD_PRAGMA(omp parallel for schedule(static) num_threads(static_cast<int>(parts)))
    for (int64_t p = 0; p < parts; ++p) {
        const int64_t lo = (total * p / parts) / 16 * 16;
        const int64_t hi = p + 1 == parts ? total : (total * (p + 1) / parts) / 16 * 16;
        if (split_n)
            blas::gemm(ta, tb, m, hi - lo, k, T(1), a, lda, b + (tb ? lo * ldb : lo), ldb, T(0), c + lo, ldc);
        else
            blas::gemm(ta, tb, hi - lo, n, k, T(1), a + (ta ? lo : lo * lda), lda, b, ldb, T(0), c + lo * ldc, ldc);
    }
}

// An uninitialized buffer (every kernel writes its buffers before reading them).
template <class T>
std::unique_ptr<T[]> buffer(int64_t n) {
    return std::unique_ptr<T[]>(new T[static_cast<size_t>(std::max<int64_t>(n, 1))]);
}

void check_common(int mask, const void* z, const void* relevance, const void* out, size_t nterms,
                  const std::string& what) {
    if (mask < -1 || mask > 1)
        throw std::invalid_argument(what + ": mask must be 0, +1 or -1, got " + std::to_string(mask));
    if (mask != 0 && z == nullptr)
        throw std::invalid_argument(what + ": mask " + std::to_string(mask) + " needs z");
    if (relevance == nullptr || out == nullptr)
        throw std::invalid_argument(what + ": relevance and out are required");
    (void)nterms;
}

template <class T>
void check_terms(const std::vector<Term<T>>& terms, const std::string& what) {
    for (size_t t = 0; t < terms.size(); ++t)
        if (terms[t].x == nullptr || terms[t].w == nullptr)
            throw std::invalid_argument(what + ": term " + std::to_string(t) + " lacks x or w");
}

}  // namespace

template <class T>
void conv_group(const ConvShape& shape, const std::vector<Term<T>>& terms, const T* relevance,
                const T* denom, const T* z, int mask, double coeff, double stabilizer, T* out) {
    check_window(shape.win, "conv_group");
    check_common(mask, z, relevance, out, terms.size(), "conv_group");
    check_terms(terms, "conv_group");
    const int64_t N = shape.n, C = shape.c, Cout = shape.cout, G = shape.group;
    if (N < 0 || C < 1 || Cout < 1 || G < 1 || C % G != 0 || Cout % G != 0)
        throw std::invalid_argument("conv_group: bad shape n=" + std::to_string(N) + " c=" +
                                    std::to_string(C) + " cout=" + std::to_string(Cout) +
                                    " group=" + std::to_string(G) +
                                    " (group must divide c and cout)");
    const Geo g = detail::geo(shape.win);
    const int64_t K = g.kernel_elems(), P = g.out_elems(), IS = g.in_elems();
    const int64_t Cg = Cout / G, Kc = (C / G) * K, rows = C * K;
    if (N == 0 || P == 0 || IS == 0 || terms.empty()) return;

    // Tiles of whole samples when one sample's columns fit the budget, else runs of one sample.
    const int64_t max_cols = std::max<int64_t>(g.ow, kColumnBudget / int64_t(sizeof(T) * rows));
    const int64_t per_chunk = P <= max_cols ? std::min(N, max_cols / P) : 1;  // samples per chunk
    const int64_t tile = P <= max_cols ? per_chunk * P : max_cols;           // columns per tile

    const auto cols = buffer<T>(rows * tile);
    const auto tmp = buffer<T>(Cout * tile);
    const int64_t rsize = N * Cout * P;

    // Runs the body for every tile [q0, q1) of the chunk of samples [n0, n1).
    auto tiles = [&](int64_t n0, int64_t n1, auto&& body) {
        for (int64_t q0 = n0 * P; q0 < n1 * P; q0 += tile) body(q0, std::min(q0 + tile, n1 * P));
    };

    // 1. The denominator (unless given): D = sum_t sign_t * (conv(x_t, w_t) + b_t).
    const auto S = buffer<T>(rsize);  // holds D until step 2 divides in place
    if (denom == nullptr) {
        for (size_t ti = 0; ti < terms.size(); ++ti) {
            const Term<T>& t = terms[ti];
            const T sign = static_cast<T>(t.sign);
            const bool first = ti == 0;  // D = 0 + sign * y, written rather than added
            for (int64_t n0 = 0; n0 < N; n0 += per_chunk) {
                tiles(n0, std::min(N, n0 + per_chunk), [&](int64_t q0, int64_t q1) {
                    const int64_t ncols = q1 - q0;
                    im2col(g, C, t.x, t.x_broadcast, q0, q1, cols.get());
                    for (int64_t gr = 0; gr < G; ++gr)
                        par_gemm(false, false, Cg, ncols, Kc, t.w + gr * Cg * Kc, Kc,
                                 cols.get() + gr * Kc * ncols, ncols, tmp.get() + gr * Cg * ncols, ncols);
                    const int64_t na = q0 / P, nb = (q1 - 1) / P + 1, nrows = (nb - na) * Cout;
                    T* D = S.get();
                    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (Cout * ncols > kParallelMin))
                    for (int64_t r = 0; r < nrows; ++r) {
                        const int64_t n = na + r / Cout, co = r % Cout;
                        const int64_t a = std::max(q0, n * P), b = std::min(q1, (n + 1) * P);
                        T* d = D + (n * Cout + co) * P + (a - n * P);
                        const T* y = tmp.get() + co * ncols + (a - q0);
                        const int64_t len = b - a;
                        const T bias = t.b != nullptr ? t.b[co] : T(0);
                        if (t.b != nullptr && first)
                            for (int64_t i = 0; i < len; ++i) d[i] = sign * (y[i] + bias);
                        else if (t.b != nullptr)
                            for (int64_t i = 0; i < len; ++i) d[i] += sign * (y[i] + bias);
                        else if (first)
                            for (int64_t i = 0; i < len; ++i) d[i] = sign * y[i];
                        else
                            for (int64_t i = 0; i < len; ++i) d[i] += sign * y[i];
                    }
                });
            }
        }
        denom = S.get();
    }

    // 2. S = R / stab(D), masked.
    quotient(rsize, relevance, denom, z, mask, stabilizer, S.get());

    // 3. Per term: grad = conv^T(S, w_t), out += (coeff * sign_t * x_t) * grad.
    const auto grad = buffer<T>(per_chunk * C * IS);
    for (const Term<T>& t : terms) {
        const T cs = static_cast<T>(coeff * t.sign);
        for (int64_t n0 = 0; n0 < N; n0 += per_chunk) {
            const int64_t n1 = std::min(N, n0 + per_chunk);
            std::fill(grad.get(), grad.get() + (n1 - n0) * C * IS, T(0));
            tiles(n0, n1, [&](int64_t q0, int64_t q1) {
                const int64_t ncols = q1 - q0;
                const T* sb;
                int64_t ldb;
                if (n1 - n0 == 1) {  // one sample: its S rows are strided views
                    sb = S.get() + n0 * Cout * P + (q0 - n0 * P);
                    ldb = P;
                } else {  // whole samples: gather S into (Cout, ncols)
                    const int64_t nrows = (n1 - n0) * Cout;
                    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (Cout * ncols > kParallelMin))
                    for (int64_t r = 0; r < nrows; ++r) {
                        const int64_t nl = r / Cout, co = r % Cout;
                        std::memcpy(tmp.get() + co * ncols + nl * P, S.get() + ((n0 + nl) * Cout + co) * P,
                                    sizeof(T) * P);
                    }
                    sb = tmp.get();
                    ldb = ncols;
                }
                for (int64_t gr = 0; gr < G; ++gr)
                    par_gemm(true, false, Kc, ncols, Cg, t.w + gr * Cg * Kc, Kc, sb + gr * Cg * ldb, ldb,
                             cols.get() + gr * Kc * ncols, ncols);
                col2im(g, C, cols.get(), q0, q1, n0, grad.get());
            });
            const int64_t planes = (n1 - n0) * C;
            const T* gd = grad.get();
            ONNXDTD_PRAGMA(omp parallel for schedule(static) if (planes * IS > kParallelMin))
            for (int64_t r = 0; r < planes; ++r) {
                const int64_t n = n0 + r / C, c = r % C;
                const T* x = t.x + ((t.x_broadcast ? 0 : n) * C + c) * IS;
                T* o = out + (n * C + c) * IS;
                const T* gp = gd + r * IS;
                for (int64_t i = 0; i < IS; ++i) o[i] += (cs * x[i]) * gp[i];
            }
        }
    }
}

template <class T>
void dense_group(const DenseShape& shape, const std::vector<Term<T>>& terms, const T* relevance,
                 const T* denom, const T* z, int mask, double coeff, double stabilizer, T* out) {
    check_common(mask, z, relevance, out, terms.size(), "dense_group");
    check_terms(terms, "dense_group");
    const int64_t M = shape.m, Kf = shape.k, J = shape.j;
    if (M < 0 || Kf < 0 || J < 0)
        throw std::invalid_argument("dense_group: negative size m=" + std::to_string(M) +
                                    " k=" + std::to_string(Kf) + " j=" + std::to_string(J));
    if (M == 0 || Kf == 0 || terms.empty()) return;

    // 1. D = sum_t sign_t * (x_t @ w_t^T + b_t), then 2. S = R / stab(D) in the same buffer.
    const auto S = buffer<T>(M * J);
    if (denom == nullptr) {
        std::fill(S.get(), S.get() + M * J, T(0));
        const auto y = buffer<T>(M * J);
        for (const Term<T>& t : terms) {
            const int64_t mx = t.x_broadcast ? 1 : M;
            par_gemm(false, true, mx, J, Kf, t.x, Kf, t.w, Kf, y.get(), J);
            const T sign = static_cast<T>(t.sign);
            T* D = S.get();
            const T* yy = y.get();
            const T* b = t.b;
            const bool bc = t.x_broadcast;
            ONNXDTD_PRAGMA(omp parallel for schedule(static) if (M * J > kParallelMin))
            for (int64_t m = 0; m < M; ++m) {
                const T* ym = yy + (bc ? 0 : m * J);
                T* dm = D + m * J;
                if (b != nullptr)
                    for (int64_t j = 0; j < J; ++j) dm[j] += sign * (ym[j] + b[j]);
                else
                    for (int64_t j = 0; j < J; ++j) dm[j] += sign * ym[j];
            }
        }
        denom = S.get();
    }
    quotient(M * J, relevance, denom, z, mask, stabilizer, S.get());

    // 3. grad = S @ w_t, out += (coeff * sign_t * x_t) * grad.
    const auto grad = buffer<T>(M * Kf);
    for (const Term<T>& t : terms) {
        par_gemm(false, false, M, Kf, J, S.get(), J, t.w, Kf, grad.get(), Kf);
        const T cs = static_cast<T>(coeff * t.sign);
        const T* gd = grad.get();
        const bool bc = t.x_broadcast;
        ONNXDTD_PRAGMA(omp parallel for schedule(static) if (M * Kf > kParallelMin))
        for (int64_t m = 0; m < M; ++m) {
            const T* x = t.x + (bc ? 0 : m * Kf);
            T* o = out + m * Kf;
            const T* gm = gd + m * Kf;
            for (int64_t k = 0; k < Kf; ++k) o[k] += (cs * x[k]) * gm[k];
        }
    }
}

#define ONNXDTD_INSTANTIATE(T)                                                                      \
    template void conv_group<T>(const ConvShape&, const std::vector<Term<T>>&, const T*, const T*, \
                                const T*, int, double, double, T*);                                \
    template void dense_group<T>(const DenseShape&, const std::vector<Term<T>>&, const T*,         \
                                 const T*, const T*, int, double, double, T*);
ONNXDTD_INSTANTIATE(float)
ONNXDTD_INSTANTIATE(double)
#undef ONNXDTD_INSTANTIATE

}  // namespace onnxdtd
