// Pooling and sums: max-pool winner routing and the proportional (z-) rule, window sums, their
// transpose, and the proportional split of an Add. One (n, c) plane per OpenMP work item; inside a
// plane the kernel offsets are visited in row-major order, as the numpy reference does, so the
// sums are added in the same order and the results are identical to it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.hpp"
#include "onnxdtd/kernels.hpp"

namespace onnxdtd {
namespace {

using detail::Geo;
using detail::inside;
using detail::kParallelMin;
using detail::Span;
using detail::stab;
using detail::valid_cols;

void check_pool(const PoolShape& shape, const std::string& what) {
    check_window(shape.win, what);
    if (shape.n < 0 || shape.c < 0)
        throw std::invalid_argument(what + ": negative batch or channel count");
}

// Calls f(o, i) for every output position o whose window offset k reads the valid input index i.
template <class F>
inline void for_each_read(const Geo& g, int64_t k, F&& f) {
    const int64_t ky = k / g.kw, kx = k % g.kw;
    for (int64_t oy = 0; oy < g.oh; ++oy) {
        const int64_t iy = g.iy(oy, ky);
        if (iy < 0 || iy >= g.ih) continue;
        for (int64_t ox = 0; ox < g.ow; ++ox) {
            const int64_t ix = g.ix(ox, kx);
            if (ix >= 0 && ix < g.iw) f(oy * g.ow + ox, iy * g.iw + ix);
        }
    }
}

// Window sums of one plane: sums[o] = 0 + x[k0] + x[k1] + ... (padding reads as 0 and is skipped).
template <class T>
void plane_sums(const Geo& g, const T* x, T* sums) {
    std::fill(sums, sums + g.out_elems(), T(0));
    for (int64_t k = 0; k < g.kernel_elems(); ++k)
        for_each_read(g, k, [&](int64_t o, int64_t i) { sums[o] += x[i]; });
}

// Transposed window sums of one plane: grad[i] = sum over (o, k) reading i of s[o], k ascending.
template <class T>
void plane_scatter(const Geo& g, const T* s, T* grad) {
    std::fill(grad, grad + g.in_elems(), T(0));
    for (int64_t k = 0; k < g.kernel_elems(); ++k)
        for_each_read(g, k, [&](int64_t o, int64_t i) { grad[i] += s[o]; });
}

inline bool parallel(const Geo& g, int64_t planes) {
    return planes > 1 && planes * (g.in_elems() + g.out_elems() * g.kernel_elems()) > kParallelMin;
}

// The winning kernel offset (win, -1: none yet) and its value (best) of every output column of
// output row oy, after the kernel row ky: the first maximum in row-major kernel order, NaN being
// the maximum (as numpy's argmax). Branch-free over the columns, so that the compiler vectorizes it;
// kStride is the column stride when known at compile time (0: g.sw).
template <int kStride, class T>
void row_argmax(const Geo& g, const T* x, const std::vector<Span>& kx, int64_t oy, int64_t ky, T* best,
                int32_t* win) {
    const int64_t sw = kStride > 0 ? kStride : g.sw;
    const T* row = x + g.iy(oy, ky) * g.iw;
    for (int64_t b = 0; b < g.kw; ++b) {
        const int32_t k = static_cast<int32_t>(ky * g.kw + b);
        const T* src = row + g.ix(0, b);
        for (int64_t ox = kx[b].lo; ox < kx[b].hi; ++ox) {
            const T v = src[ox * sw];
            // !(v <= best): v is larger, or one of them is NaN; a NaN best (best != best) stays.
            // Bitwise operators: no branches, so that the loop vectorizes.
            const bool take = (win[ox] < 0) | (!(v <= best[ox]) & (best[ox] == best[ox]));
            best[ox] = take ? v : best[ox];
            win[ox] = take ? k : win[ox];
        }
    }
}

}  // namespace

template <class T>
void maxpool_winner(const PoolShape& shape, const T* a, const T* relevance, T* out) {
    check_pool(shape, "maxpool_winner");
    const Geo g = detail::geo(shape.win);
    const int64_t planes = shape.n * shape.c, IS = g.in_elems(), P = g.out_elems();
    // The kernel rows of every output row, and the output columns of every kernel column, that read
    // inside the input (padding never wins).
    std::vector<Span> ky(static_cast<size_t>(g.oh)), kx(static_cast<size_t>(g.kw));
    for (int64_t oy = 0; oy < g.oh; ++oy) ky[oy] = inside(g.iy(oy, 0), g.kh, g.dh, g.ih);
    for (int64_t b = 0; b < g.kw; ++b) kx[b] = valid_cols(g, b);
    ONNXDTD_PRAGMA(omp parallel if (parallel(g, planes)))
    {
        std::vector<T> best(static_cast<size_t>(g.ow));
        std::vector<int32_t> win(static_cast<size_t>(g.ow));
        ONNXDTD_PRAGMA(omp for schedule(static))
        for (int64_t pl = 0; pl < planes; ++pl) {
            const T* x = a + pl * IS;
            const T* r = relevance + pl * P;
            T* o = out + pl * IS;
            std::fill(o, o + IS, T(0));
            // Outputs in descending order: then the windows that share an input add up in
            // ascending kernel-offset order, as in the reference (a later output reads it at an
            // earlier offset).
            for (int64_t oy = g.oh - 1; oy >= 0; --oy) {
                std::fill(win.begin(), win.end(), int32_t(-1));
                for (int64_t k = ky[oy].lo; k < ky[oy].hi; ++k) {
                    if (g.sw == 1)
                        row_argmax<1>(g, x, kx, oy, k, best.data(), win.data());
                    else if (g.sw == 2)
                        row_argmax<2>(g, x, kx, oy, k, best.data(), win.data());
                    else
                        row_argmax<0>(g, x, kx, oy, k, best.data(), win.data());
                }
                for (int64_t ox = g.ow - 1; ox >= 0; --ox)
                    if (win[ox] >= 0)
                        o[g.iy(oy, win[ox] / g.kw) * g.iw + g.ix(ox, win[ox] % g.kw)] += r[oy * g.ow + ox];
            }
        }
    }
}

template <class T>
void maxpool_proportional(const PoolShape& shape, const T* a, const T* relevance, double stabilizer,
                          T* out) {
    check_pool(shape, "maxpool_proportional");
    const Geo g = detail::geo(shape.win);
    const int64_t planes = shape.n * shape.c, IS = g.in_elems(), P = g.out_elems();
    const T eps = static_cast<T>(stabilizer);
    std::vector<T> scratch(static_cast<size_t>(detail::thread_count() * P));
    ONNXDTD_PRAGMA(omp parallel if (parallel(g, planes)))
    {
        T* s = scratch.data() + detail::thread_id() * P;
        ONNXDTD_PRAGMA(omp for schedule(static))
        for (int64_t pl = 0; pl < planes; ++pl) {
            const T* x = a + pl * IS;
            const T* r = relevance + pl * P;
            T* o = out + pl * IS;
            plane_sums(g, x, s);
            for (int64_t p = 0; p < P; ++p) s[p] = r[p] / stab(s[p], eps);
            plane_scatter(g, s, o);
            for (int64_t i = 0; i < IS; ++i) o[i] = x[i] * o[i];
        }
    }
}

template <class T>
void sumpool(const PoolShape& shape, const T* x, T* out) {
    check_pool(shape, "sumpool");
    const Geo g = detail::geo(shape.win);
    const int64_t planes = shape.n * shape.c, IS = g.in_elems(), P = g.out_elems();
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (parallel(g, planes)))
    for (int64_t pl = 0; pl < planes; ++pl) plane_sums(g, x + pl * IS, out + pl * P);
}

template <class T>
void unpool(const PoolShape& shape, const T* s, T* out) {
    check_pool(shape, "unpool");
    const Geo g = detail::geo(shape.win);
    const int64_t planes = shape.n * shape.c, IS = g.in_elems(), P = g.out_elems();
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (parallel(g, planes)))
    for (int64_t pl = 0; pl < planes; ++pl) plane_scatter(g, s + pl * P, out + pl * IS);
}

template <class T>
void add_split(int64_t size, const std::vector<const T*>& inputs, const T* relevance,
               double stabilizer, const std::vector<T*>& outs) {
    if (inputs.empty() || inputs.size() != outs.size())
        throw std::invalid_argument("add_split: need one output per input and at least one input");
    if (size < 0) throw std::invalid_argument("add_split: negative size");
    const T eps = static_cast<T>(stabilizer);
    const int64_t n = static_cast<int64_t>(inputs.size());
    // Blocks of elements, each loop over one input at a time: the loops vectorize (a loop over the
    // inputs inside the element loop would not), and a block's sums stay in L1.
    constexpr int64_t block = 2048;
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (size * n > kParallelMin))
    for (int64_t lo = 0; lo < size; lo += block) {
        const int64_t len = std::min(block, size - lo);
        T s[block];
        const T* x0 = inputs[0] + lo;
        for (int64_t i = 0; i < len; ++i) s[i] = x0[i];
        for (int64_t k = 1; k < n; ++k) {
            const T* xk = inputs[k] + lo;
            for (int64_t i = 0; i < len; ++i) s[i] += xk[i];
        }
        const T* r = relevance + lo;
        for (int64_t i = 0; i < len; ++i) s[i] = r[i] / stab(s[i], eps);
        for (int64_t k = 0; k < n; ++k) {
            const T* xk = inputs[k] + lo;
            T* o = outs[k] + lo;
            for (int64_t i = 0; i < len; ++i) o[i] = xk[i] * s[i];
        }
    }
}

#define ONNXDTD_INSTANTIATE(T)                                                                    \
    template void maxpool_winner<T>(const PoolShape&, const T*, const T*, T*);                    \
    template void maxpool_proportional<T>(const PoolShape&, const T*, const T*, double, T*);      \
    template void sumpool<T>(const PoolShape&, const T*, T*);                                     \
    template void unpool<T>(const PoolShape&, const T*, T*);                                      \
    template void add_split<T>(int64_t, const std::vector<const T*>&, const T*, double,           \
                               const std::vector<T*>&);
ONNXDTD_INSTANTIATE(float)
ONNXDTD_INSTANTIATE(double)
#undef ONNXDTD_INSTANTIATE

}  // namespace onnxdtd
