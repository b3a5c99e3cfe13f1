// Pooling and sums: max-pool winner routing and the proportional (z-) rule, window sums, their
// transpose, and the proportional split of an Add. One (n, c) plane per OpenMP work item; inside a
// plane the kernel offsets are visited in row-major order, as the numpy reference does, so the
// sums are added in the same order and the results are identical to it.
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.hpp"
#include "onnxdtd/kernels.hpp"

namespace onnxdtd {
namespace {

using detail::Geo;
using detail::kParallelMin;
using detail::stab;

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

}  // namespace

template <class T>
void maxpool_winner(const PoolShape& shape, const T* a, const T* relevance, T* out) {
    check_pool(shape, "maxpool_winner");
    const Geo g = detail::geo(shape.win);
    const int64_t planes = shape.n * shape.c, IS = g.in_elems(), P = g.out_elems(), K = g.kernel_elems();
    // Per thread: the winning kernel offset and input index of every output (-1: none yet).
    std::vector<int64_t> scratch(static_cast<size_t>(detail::thread_count() * 2 * P));
    ONNXDTD_PRAGMA(omp parallel if (parallel(g, planes)))
    {
        int64_t* win_k = scratch.data() + detail::thread_id() * 2 * P;
        int64_t* win_i = win_k + P;
        ONNXDTD_PRAGMA(omp for schedule(static))
        for (int64_t pl = 0; pl < planes; ++pl) {
            const T* x = a + pl * IS;
            const T* r = relevance + pl * P;
            T* o = out + pl * IS;
            // The first maximum in row-major kernel order; a NaN is the maximum (as numpy's argmax).
            std::fill(win_k, win_k + P, int64_t(-1));
            for (int64_t k = 0; k < K; ++k)
                for_each_read(g, k, [&](int64_t p, int64_t i) {
                    const T v = x[i];
                    bool take = win_k[p] < 0;
                    if (!take) {
                        const T best = x[win_i[p]];
                        take = !std::isnan(best) && (std::isnan(v) || v > best);
                    }
                    if (take) {
                        win_k[p] = k;
                        win_i[p] = i;
                    }
                });
            // Route in kernel-offset order, so that overlapping windows add up as in the reference.
            std::fill(o, o + IS, T(0));
            for (int64_t k = 0; k < K; ++k)
                for (int64_t p = 0; p < P; ++p)
                    if (win_k[p] == k) o[win_i[p]] += r[p];
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
    const T* const* in = inputs.data();
    T* const* os = outs.data();
    ONNXDTD_PRAGMA(omp parallel for schedule(static) if (size * n > kParallelMin))
    for (int64_t i = 0; i < size; ++i) {
        T total = in[0][i];
        for (int64_t k = 1; k < n; ++k) total += in[k][i];
        const T s = relevance[i] / stab(total, eps);
        for (int64_t k = 0; k < n; ++k) os[k][i] = in[k][i] * s;
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
