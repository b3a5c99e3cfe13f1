// Rule passes through linear layers: conv_group (grouped N-D convolution over im2col columns)
// and dense_group, each as GEMMs plus fused elementwise loops.
//
// Numerics follow the numpy reference (onnxdtd/backends/numpy_backend.py) operation by operation:
//   D = 0;  D += T(sign_t) * (W_t @ cols_t + b_t)        per term, in term order
//   S = R / stab(D)  [* T(z > 0) / T(z < 0)]
//   grad_t = col2im(W_t^T @ S)                           kernel offsets added in row-major order
//   out += (T(coeff * sign_t) * x_t) * grad_t
// so the results differ from it only by the summation order inside the matrix products (and, for
// streamed dense layers, by the order of the partial sums over blocks of outputs).
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
using detail::Span;
using detail::stab;
using detail::valid_cols;

// The im2col column buffer stays under this many bytes (unless a single output row needs more):
// tiles that stay in the last-level cache between im2col and the GEMM. Measured on a 2-core AVX2
// machine, 8-16 MiB beat both smaller tiles (more, smaller GEMMs) and 64 MiB (page faults, DRAM).
constexpr int64_t kColumnBudget = int64_t(16) << 20;

// The output rows whose kernel row ky reads an input row inside [r0, r1).
inline Span rows_reading(const Geo& g, int64_t ky, int64_t r0, int64_t r1) {
    const int64_t off = ky * g.dh - g.ph;  // iy = oy * sh + off
    auto first_at_or_above = [&](int64_t r) {
        const int64_t d = r - off;
        return std::clamp<int64_t>(d <= 0 ? 0 : (d + g.sh - 1) / g.sh, 0, g.oh);
    };
    return {first_at_or_above(r0), first_at_or_above(r1)};
}

// The run of output columns [ox, ox + len) cut by a span.
inline Span clip(Span s, int64_t ox, int64_t len) {
    const int64_t a = std::clamp(s.lo, ox, ox + len), b = std::clamp(s.hi, ox, ox + len);
    return {a, std::max(a, b)};
}

// d[i] = src[i * stride] for i < len; strides 1 and 2 (the common ones) with the stride known at
// compile time, so that the copy vectorizes.
template <class T>
void gather(const T* src, int64_t stride, int64_t len, T* d) {
    if (stride == 1)
        std::copy(src, src + len, d);
    else if (stride == 2)
        for (int64_t i = 0; i < len; ++i) d[i] = src[2 * i];
    else
        for (int64_t i = 0; i < len; ++i) d[i] = src[i * stride];
}

// cols (C*K rows x (q1-q0) columns) <- the receptive field of every output position q in [q0, q1)
// (q = n * P + p over the batch).
template <class T>
void im2col(const Geo& g, int64_t C, const T* x, bool bcast, int64_t q0, int64_t q1, T* cols) {
    const int64_t K = g.kernel_elems(), IS = g.in_elems(), P = g.out_elems(), rows = C * K;
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (rows * (q1 - q0) > kParallelMin))
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t c = r / K, k = r % K, ky = k / g.kw, kx = k % g.kw;
        const Span span = valid_cols(g, kx);
        for (int64_t n = q0 / P; n * P < q1; ++n) {
            const int64_t a = std::max(q0, n * P), b = std::min(q1, (n + 1) * P);
            const T* plane = x + ((bcast ? 0 : n) * C + c) * IS;
            T* dst = cols + r * (q1 - q0) + (a - q0);
            for_each_run(g, a - n * P, b - n * P, 0, g.oh, [&](int64_t oy, int64_t ox, int64_t len, int64_t j) {
                T* d = dst + j - ox;  // d[ox'] is the column of output column ox' of this run's row
                const int64_t iy = g.iy(oy, ky);
                const Span in = (iy < 0 || iy >= g.ih) ? Span{ox, ox} : clip(span, ox, len);
                std::fill(d + ox, d + in.lo, T(0));
                const T* src = plane + iy * g.iw + g.ix(in.lo, kx);
                gather(src, g.sw, in.hi - in.lo, d + in.lo);
                std::fill(d + in.hi, d + ox + len, T(0));
            });
        }
    }
}

// The gradient of one input plane is collected in phase-major rows: input column ix of a row sits
// at (ix % sw) * J + ix / sw, J = ceil(iw / sw). A run of output columns then adds onto a
// contiguous run of it for any stride, and the adds vectorize; accumulate_plane reads it back.
struct PhaseRows {
    int64_t sw, J, width;  // stride, columns per phase, row length (sw * J)

    explicit PhaseRows(const Geo& g) : sw(g.sw), J((g.iw + g.sw - 1) / g.sw), width(g.sw * J) {}
    int64_t at(int64_t ix) const { return ix % sw * J + ix / sw; }
};

// Input rows [r0, r1) of one gradient plane (phase-major) += its K column rows (row k at
// src + k * ld, whose column 0 is the sample's output position p0) over the positions [p0, p1),
// scattered back onto the input positions they read. Per input element the kernel offsets add up
// in row-major order, as in the numpy reference.
template <class T>
void col2im_rows(const Geo& g, const PhaseRows& pr, const T* src, int64_t ld, int64_t p0, int64_t p1,
                 int64_t r0, int64_t r1, T* plane) {
    for (int64_t k = 0; k < g.kernel_elems(); ++k) {
        const int64_t ky = k / g.kw, kx = k % g.kw;
        const Span span = valid_cols(g, kx), oy = rows_reading(g, ky, r0, r1);
        const T* row_k = src + k * ld;
        for_each_run(g, p0, p1, oy.lo, oy.hi, [&](int64_t y, int64_t ox, int64_t len, int64_t j) {
            const Span in = clip(span, ox, len);
            const T* s = row_k + j + (in.lo - ox);
            T* d = plane + g.iy(y, ky) * pr.width + pr.at(g.ix(in.lo, kx));
            for (int64_t i = 0; i < in.hi - in.lo; ++i) d[i] += s[i];
        });
    }
}

// S = R / stab(D), then masked by the sign of z (z unused when mask is 0). S may alias D. Two loops
// written so that both vectorize.
template <class T>
void quotient(int64_t size, const T* R, const T* D, const T* z, int mask, T eps, T* S) {
    for (int64_t i = 0; i < size; ++i) S[i] = R[i] / stab(D[i], eps);
    if (mask == 0) return;
    for (int64_t i = 0; i < size; ++i) {
        const T keep = mask > 0 ? z[i] > T(0) : z[i] < T(0);  // 1 or 0
        S[i] = S[i] * keep;
    }
}

// quotient over a whole array, in parallel blocks.
template <class T>
void par_quotient(int64_t size, const T* R, const T* D, const T* z, int mask, T eps, T* S) {
    constexpr int64_t block = 4096;
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (size > kParallelMin))
    for (int64_t lo = 0; lo < size; lo += block)
        quotient(std::min(block, size - lo), R + lo, D + lo, z == nullptr ? nullptr : z + lo, mask, eps,
                 S + lo);
}

// d = sign * (y + bias) on the first term, else d += sign * (y + bias); bias optional.
template <class T>
void add_term(const T* y, const T* bias, T sign, bool first, int64_t len, T* d) {
    const T b = bias != nullptr ? *bias : T(0);
    if (bias != nullptr && first)
        for (int64_t i = 0; i < len; ++i) d[i] = sign * (y[i] + b);
    else if (bias != nullptr)
        for (int64_t i = 0; i < len; ++i) d[i] += sign * (y[i] + b);
    else if (first)
        for (int64_t i = 0; i < len; ++i) d[i] = sign * y[i];
    else
        for (int64_t i = 0; i < len; ++i) d[i] += sign * y[i];
}

// out += (cs * x) * grad.
template <class T>
void accumulate(const T* x, const T* grad, T cs, int64_t len, T* out) {
    for (int64_t i = 0; i < len; ++i) out[i] += (cs * x[i]) * grad[i];
}

// accumulate over the input rows [r0, r1) of a plane whose gradient has phase-major rows.
template <class T>
void accumulate_plane(const Geo& g, const PhaseRows& pr, const T* x, const T* grad, T cs, int64_t r0,
                      int64_t r1, T* out) {
    if (pr.sw == 1) {
        accumulate(x + r0 * g.iw, grad + r0 * g.iw, cs, (r1 - r0) * g.iw, out + r0 * g.iw);
        return;
    }
    for (int64_t iy = r0; iy < r1; ++iy)
        for (int64_t phase = 0; phase < pr.sw; ++phase) {  // input columns phase, phase + sw, ...
            const int64_t at = iy * g.iw + phase, count = (g.iw - phase + pr.sw - 1) / pr.sw;
            const T* gp = grad + iy * pr.width + phase * pr.J;
            for (int64_t j = 0; j < count; ++j) out[at + j * pr.sw] += (cs * x[at + j * pr.sw]) * gp[j];
        }
}

// C = op(A) @ op(B), split into blocks of rows or columns over the OpenMP threads when the BLAS runs
// single-threaded (onnxdtd._core makes its private OpenBLAS so): then one thread pool does all the
// work, instead of the BLAS's threads spinning against the OpenMP ones between calls. Inside a
// parallel region it is one plain call.
template <class T>
void par_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
              int64_t ldb, T* c, int64_t ldc) {
    const int nt = detail::thread_count();
    const bool split_n = n >= m;
    const int64_t total = split_n ? n : m;
    const int64_t parts = std::min<int64_t>(nt, total / 64);
    if (parts < 2 || blas::threads() != 1 || detail::in_parallel() ||
        double(m) * double(n) * double(k) < double(1 << 21)) {
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

void check_common(int mask, const void* z, const void* relevance, const void* out, const std::string& what) {
    if (mask < -1 || mask > 1)
        throw std::invalid_argument(what + ": mask must be 0, +1 or -1, got " + std::to_string(mask));
    if (mask != 0 && z == nullptr)
        throw std::invalid_argument(what + ": mask " + std::to_string(mask) + " needs z");
    if (relevance == nullptr || out == nullptr)
        throw std::invalid_argument(what + ": relevance and out are required");
}

template <class T>
void check_terms(const std::vector<Term<T>>& terms, const std::string& what) {
    for (size_t t = 0; t < terms.size(); ++t)
        if (terms[t].x == nullptr || terms[t].w == nullptr)
            throw std::invalid_argument(what + ": term " + std::to_string(t) + " lacks x or w");
}

// One conv_group call: its geometry, how it walks the columns and its buffers.
//
// The columns of all output positions q = n * P + p are walked in tiles: whole samples per tile
// when one sample's columns fit the budget, else runs of one sample. A 1x1 stride-1 unpadded conv
// ("pointwise") needs no im2col and no col2im: a sample's columns are its input planes, and the
// transposed GEMM's output is the gradient itself.
template <class T>
struct ConvPass {
    Geo g;
    int64_t N, C, Cout, G, K, P, IS, Cg, Kc, rows;
    int64_t per_chunk, tile;  // samples per chunk of tiles, columns per tile
    bool pointwise;
    std::unique_ptr<T[]> cols, tmp, grad;

    explicit ConvPass(const ConvShape& s)
        : g(detail::geo(s.win)), N(s.n), C(s.c), Cout(s.cout), G(s.group), K(g.kernel_elems()),
          P(g.out_elems()), IS(g.in_elems()), Cg(Cout / G), Kc(C / G * K), rows(C * K) {
        const int64_t max_cols = std::max<int64_t>(g.ow, kColumnBudget / int64_t(sizeof(T) * rows));
        per_chunk = P <= max_cols ? std::min(N, max_cols / P) : 1;
        tile = P <= max_cols ? per_chunk * P : max_cols;
        pointwise = K == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0 && g.oh == g.ih && g.ow == g.iw;
        cols = buffer<T>(rows * tile);
        tmp = buffer<T>(Cout * tile);
        if (!pointwise) grad = buffer<T>(per_chunk * C * g.ih * PhaseRows(g).width);
    }

    // Calls body(q0, q1) for every tile of the chunk of samples [n0, n1).
    template <class F>
    void tiles(int64_t n0, int64_t n1, F&& body) const {
        for (int64_t q0 = n0 * P; q0 < n1 * P; q0 += tile) body(q0, std::min(q0 + tile, n1 * P));
    }

    // The columns of term x over the tile [q0, q1) and their leading dimension.
    const T* columns(const Term<T>& t, int64_t q0, int64_t q1, int64_t& ld) {
        const int64_t n = q0 / P;
        if (pointwise && q1 <= (n + 1) * P) {  // inside one sample: that sample's planes
            ld = P;
            return t.x + (t.x_broadcast ? 0 : n) * C * P + (q0 - n * P);
        }
        im2col(g, C, t.x, t.x_broadcast, q0, q1, cols.get());
        ld = q1 - q0;
        return cols.get();
    }

    // The tile's term of D (S holds D, in (N, Cout, P) layout); on the last term S = R / stab(D).
    void denominator(const Term<T>& t, bool first, bool last, int64_t q0, int64_t q1, const T* R,
                     const T* z, int mask, T eps, T* S) {
        const int64_t ncols = q1 - q0, na = q0 / P, nrows = ((q1 - 1) / P + 1 - na) * Cout;
        // The first term of a tile inside one sample goes straight into S (rows of stride P), where
        // D is formed in place; others go through tmp.
        const bool direct = first && nrows == Cout;
        T* y = direct ? S + na * Cout * P + (q0 - na * P) : tmp.get();
        const int64_t ldy = direct ? P : ncols;
        int64_t ld;
        const T* cb = columns(t, q0, q1, ld);
        for (int64_t gr = 0; gr < G; ++gr)
            par_gemm(false, false, Cg, ncols, Kc, t.w + gr * Cg * Kc, Kc, cb + gr * Kc * ld, ld,
                     y + gr * Cg * ldy, ldy);
        const T sign = static_cast<T>(t.sign);
        const bool as_is = direct && sign == T(1) && t.b == nullptr;  // D = y already
        if (as_is && !last) return;
        ONNXDTD_PRAGMA(omp parallel for schedule(static) if (Cout * ncols > kParallelMin))
        for (int64_t r = 0; r < nrows; ++r) {
            const int64_t n = na + r / Cout, co = r % Cout;
            const int64_t a = std::max(q0, n * P), b = std::min(q1, (n + 1) * P);
            const int64_t at = (n * Cout + co) * P + (a - n * P);
            if (!as_is)
                add_term(y + co * ldy + (a - q0), t.b != nullptr ? t.b + co : nullptr, sign, first, b - a, S + at);
            if (last) quotient(b - a, R + at, S + at, z == nullptr ? nullptr : z + at, mask, eps, S + at);
        }
    }

    // out += cs * x (.) conv^T(S, w) over the tile [q0, q1) of the chunk that starts at sample n0.
    void transpose(const Term<T>& t, T cs, int64_t n0, int64_t q0, int64_t q1, const T* S, T* out) {
        const int64_t ncols = q1 - q0, na = q0 / P, nb = (q1 - 1) / P + 1;
        const T* sb = S + na * Cout * P + (q0 - na * P);  // one sample: its S rows are strided views
        int64_t ldb = P;
        if (nb - na > 1) {  // whole samples: gather S into (Cout, ncols)
            ONNXDTD_PRAGMA(omp parallel for schedule(static) if (Cout * ncols > kParallelMin))
            for (int64_t r = 0; r < (nb - na) * Cout; ++r) {
                const int64_t nl = r / Cout, co = r % Cout;
                std::memcpy(tmp.get() + co * ncols + nl * P, S + ((na + nl) * Cout + co) * P, sizeof(T) * P);
            }
            sb = tmp.get();
            ldb = ncols;
        }
        for (int64_t gr = 0; gr < G; ++gr)
            par_gemm(true, false, Kc, ncols, Cg, t.w + gr * Cg * Kc, Kc, sb + gr * Cg * ldb, ldb,
                     cols.get() + gr * Kc * ncols, ncols);
        // Work items: (plane, band of input rows); bands only when there are few planes.
        const int64_t planes = (nb - na) * C, nt = detail::thread_count();
        const int64_t nband = nt > 1 ? std::clamp<int64_t>((8 * nt + planes - 1) / planes, 1, g.ih) : 1;
        const int64_t items = planes * nband;
        const PhaseRows pr(g);
        ONNXDTD_PRAGMA(omp parallel for schedule(static) if (rows * ncols > kParallelMin))
        for (int64_t it = 0; it < items; ++it) {
            const int64_t pl = it / nband, band = it % nband, n = na + pl / C, c = pl % C;
            const int64_t a = std::max(q0, n * P), b = std::min(q1, (n + 1) * P);
            const int64_t r0 = g.ih * band / nband, r1 = g.ih * (band + 1) / nband;
            const T* src = cols.get() + c * K * ncols + (a - q0);  // column of position a
            const T* x = t.x + ((t.x_broadcast ? 0 : n) * C + c) * IS;
            T* o = out + (n * C + c) * IS;
            if (pointwise) {  // the columns are the gradient of the positions [a, b) themselves
                const int64_t lo = std::max(a - n * P, r0 * g.iw), hi = std::min(b - n * P, r1 * g.iw);
                if (lo < hi) accumulate(x + lo, src + (lo - (a - n * P)), cs, hi - lo, o + lo);
                continue;
            }
            // The gradient plane collects every tile of its sample; done on the sample's last tile.
            T* acc = grad.get() + ((n - n0) * C + c) * g.ih * pr.width;
            if (a == n * P) std::fill(acc + r0 * pr.width, acc + r1 * pr.width, T(0));
            col2im_rows(g, pr, src, ncols, a - n * P, b - n * P, r0, r1, acc);
            if (b == (n + 1) * P) accumulate_plane(g, pr, x, acc, cs, r0, r1, o);
        }
    }
};

// Dense layers with at most kDenseStreamRows rows (batch), weights of more than kDenseStreamMin bytes
// (all terms together) and no given denominator are streamed: blocks of weight rows go through both
// passes while in cache, so that the weights come from memory once instead of twice. With few rows
// the layer is memory-bound; measured on VGG16's first dense layer, streaming wins up to 4 rows and
// loses from 8 on (its GEMMs are small).
constexpr int64_t kDenseStreamRows = 4;
constexpr int64_t kDenseStreamMin = int64_t(16) << 20;
constexpr int64_t kDenseBlockBytes = int64_t(1) << 20;  // weight rows of one block, all terms
// The streamed transposed pass sums this many partial results, in a fixed order (so that the result
// does not depend on the thread count).
constexpr int64_t kDenseParts = 8;

// D (M x (j1-j0)) of the outputs [j0, j1) = sum_t sign_t * (x_t @ w_t^T + b_t); y: scratch of D's size.
template <class T>
void dense_denominator(const DenseShape& sh, const std::vector<Term<T>>& terms, int64_t j0, int64_t j1, T* y,
                       T* D) {
    const int64_t M = sh.m, Kf = sh.k, jb = j1 - j0;
    for (size_t ti = 0; ti < terms.size(); ++ti) {
        const Term<T>& t = terms[ti];
        const bool bc = t.x_broadcast, first = ti == 0;
        const T sign = static_cast<T>(t.sign);
        par_gemm(false, true, bc ? 1 : M, jb, Kf, t.x, Kf, t.w + j0 * Kf, Kf, y, jb);
        ONNXDTD_PRAGMA(omp parallel for schedule(static) if (M * jb > kParallelMin))
        for (int64_t m = 0; m < M; ++m) {
            const T* ym = y + (bc ? 0 : m * jb);
            T* dm = D + m * jb;
            for (int64_t j = 0; j < jb; ++j) {
                const T v = t.b != nullptr ? sign * (ym[j] + t.b[j0 + j]) : sign * ym[j];
                dm[j] = first ? v : dm[j] + v;
            }
        }
    }
}

// out += (coeff * sign_t * x_t) * grad_t for every term; grad_t (M x Kf) at grads + t * M * Kf.
template <class T>
void dense_accumulate(const DenseShape& sh, const std::vector<Term<T>>& terms, const T* grads, double coeff,
                      T* out) {
    const int64_t M = sh.m, Kf = sh.k;
    for (size_t ti = 0; ti < terms.size(); ++ti) {
        const Term<T>& t = terms[ti];
        const T cs = static_cast<T>(coeff * t.sign);
        ONNXDTD_PRAGMA(omp parallel for schedule(static) if (M * Kf > kParallelMin))
        for (int64_t m = 0; m < M; ++m)
            accumulate(t.x + (t.x_broadcast ? 0 : m * Kf), grads + (ti * M + m) * Kf, cs, Kf, out + m * Kf);
    }
}

// Both passes over blocks of weight rows. grads (one M x Kf sum per term) are written.
template <class T>
void dense_streamed(const DenseShape& sh, const std::vector<Term<T>>& terms, const T* R, const T* z, int mask,
                    T eps, T* grads) {
    const int64_t M = sh.m, Kf = sh.k, J = sh.j, nt = static_cast<int64_t>(terms.size());
    const int64_t jb = std::clamp<int64_t>(kDenseBlockBytes / int64_t(sizeof(T) * nt * Kf), 1, J);
    const int64_t blocks = (J + jb - 1) / jb, part = nt * M * Kf;
    const auto partial = buffer<T>(kDenseParts * part), scratch = buffer<T>(kDenseParts * 2 * M * jb);
    std::fill(partial.get(), partial.get() + kDenseParts * part, T(0));
    ONNXDTD_PRAGMA(omp parallel for schedule(static))
    for (int64_t p = 0; p < kDenseParts; ++p) {
        T* y = scratch.get() + p * 2 * M * jb;  // y and S of one block
        T* S = y + M * jb;
        for (int64_t bl = blocks * p / kDenseParts; bl < blocks * (p + 1) / kDenseParts; ++bl) {
            const int64_t j0 = bl * jb, j1 = std::min(J, j0 + jb);
            dense_denominator(sh, terms, j0, j1, y, S);
            for (int64_t m = 0; m < M; ++m)
                quotient(j1 - j0, R + m * J + j0, S + m * (j1 - j0), z == nullptr ? nullptr : z + m * J + j0, mask,
                         eps, S + m * (j1 - j0));
            for (int64_t ti = 0; ti < nt; ++ti)
                blas::gemm(false, false, M, Kf, j1 - j0, T(1), S, j1 - j0, terms[ti].w + j0 * Kf, Kf, T(1),
                           partial.get() + p * part + ti * M * Kf, Kf);
        }
    }
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (part > kParallelMin))
    for (int64_t i = 0; i < part; ++i) {
        T sum = partial[i];
        for (int64_t p = 1; p < kDenseParts; ++p) sum += partial[p * part + i];
        grads[i] = sum;
    }
}

}  // namespace

template <class T>
void conv_group(const ConvShape& shape, const std::vector<Term<T>>& terms, const T* relevance,
                const T* denom, const T* z, int mask, double coeff, double stabilizer, T* out) {
    check_window(shape.win, "conv_group");
    check_common(mask, z, relevance, out, "conv_group");
    check_terms(terms, "conv_group");
    const int64_t N = shape.n, C = shape.c, Cout = shape.cout, G = shape.group;
    if (N < 0 || C < 1 || Cout < 1 || G < 1 || C % G != 0 || Cout % G != 0)
        throw std::invalid_argument("conv_group: bad shape n=" + std::to_string(N) + " c=" +
                                    std::to_string(C) + " cout=" + std::to_string(Cout) +
                                    " group=" + std::to_string(G) +
                                    " (group must divide c and cout)");
    if (N == 0 || shape.win.out_elems() == 0 || shape.win.in_elems() == 0 || terms.empty()) return;
    ConvPass<T> pass(shape);
    const T eps = static_cast<T>(stabilizer);

    // 1. S = R / stab(D), masked; D = denom or sum_t sign_t * (conv(x_t, w_t) + b_t).
    const auto S = buffer<T>(N * Cout * pass.P);
    if (denom != nullptr) {
        par_quotient(N * Cout * pass.P, relevance, denom, z, mask, eps, S.get());
    } else {
        for (size_t ti = 0; ti < terms.size(); ++ti)
            for (int64_t n0 = 0; n0 < N; n0 += pass.per_chunk)
                pass.tiles(n0, std::min(N, n0 + pass.per_chunk), [&](int64_t q0, int64_t q1) {
                    pass.denominator(terms[ti], ti == 0, ti + 1 == terms.size(), q0, q1, relevance, z, mask,
                                     eps, S.get());
                });
    }

    // 2. Per term: out += (coeff * sign_t * x_t) * conv^T(S, w_t).
    for (const Term<T>& t : terms) {
        const T cs = static_cast<T>(coeff * t.sign);
        for (int64_t n0 = 0; n0 < N; n0 += pass.per_chunk)
            pass.tiles(n0, std::min(N, n0 + pass.per_chunk),
                       [&](int64_t q0, int64_t q1) { pass.transpose(t, cs, n0, q0, q1, S.get(), out); });
    }
}

template <class T>
void dense_group(const DenseShape& shape, const std::vector<Term<T>>& terms, const T* relevance,
                 const T* denom, const T* z, int mask, double coeff, double stabilizer, T* out) {
    check_common(mask, z, relevance, out, "dense_group");
    check_terms(terms, "dense_group");
    const int64_t M = shape.m, Kf = shape.k, J = shape.j, nt = static_cast<int64_t>(terms.size());
    if (M < 0 || Kf < 0 || J < 0)
        throw std::invalid_argument("dense_group: negative size m=" + std::to_string(M) +
                                    " k=" + std::to_string(Kf) + " j=" + std::to_string(J));
    if (M == 0 || Kf == 0 || terms.empty()) return;
    for (int64_t v : {M, Kf, J}) blas::to_int(v);  // throw here, not inside a parallel region
    const T eps = static_cast<T>(stabilizer);
    const auto grads = buffer<T>(nt * M * Kf);
    const bool streamed =
        denom == nullptr && M <= kDenseStreamRows && nt * J * Kf * int64_t(sizeof(T)) > kDenseStreamMin;
    if (streamed) {
        dense_streamed(shape, terms, relevance, z, mask, eps, grads.get());
    } else {
        // S = R / stab(D) (D = denom, or computed in S), then grad_t = S @ w_t.
        const auto S = buffer<T>(M * J);
        if (denom == nullptr) {
            dense_denominator(shape, terms, 0, J, buffer<T>(M * J).get(), S.get());
            denom = S.get();
        }
        par_quotient(M * J, relevance, denom, z, mask, eps, S.get());
        for (int64_t ti = 0; ti < nt; ++ti)
            par_gemm(false, false, M, Kf, J, S.get(), J, terms[ti].w, Kf, grads.get() + ti * M * Kf, Kf);
    }
    dense_accumulate(shape, terms, grads.get(), coeff, out);
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
