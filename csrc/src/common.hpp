// Private helpers shared by the kernel sources: OpenMP glue, the stabilizer, 2-D window views.
#pragma once

#include <algorithm>
#include <cstdint>

#include "onnxdtd/kernels.hpp"

#ifdef _OPENMP
#include <omp.h>
#define ONNXDTD_PRAGMA(x) _Pragma(#x)
#else
#define ONNXDTD_PRAGMA(x)
#endif

namespace onnxdtd::detail {

// Loops over fewer elements than this stay on one thread.
constexpr int64_t kParallelMin = int64_t(1) << 15;

inline int thread_count() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Whether the caller already runs inside a parallel region (whose threads are all busy).
inline bool in_parallel() {
#ifdef _OPENMP
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// s(d) = d + eps if d >= 0 else d - eps (NaN stays NaN), as onnxdtd.rules.base.stabilize. Written
// as one add of a selected constant (d - eps == d + -eps exactly): a select between two sums would
// keep the loops that call it from vectorizing (the compiler does not evaluate both sums).
template <class T>
inline T stab(T d, T eps) {
    return d + (d >= T(0) ? eps : -eps);
}

// A Window seen as 2-D: spatial rank 1 becomes an image of height 1.
struct Geo {
    int64_t ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw;

    int64_t in_elems() const { return ih * iw; }
    int64_t out_elems() const { return oh * ow; }
    int64_t kernel_elems() const { return kh * kw; }

    // Input row / column read by output row oy (column ox) at kernel row ky (column kx).
    int64_t iy(int64_t oy, int64_t ky) const { return oy * sh + ky * dh - ph; }
    int64_t ix(int64_t ox, int64_t kx) const { return ox * sw + kx * dw - pw; }
};

inline Geo geo(const Window& w) {
    if (w.rank == 1)
        return {1, w.in_size[0], 1, w.out_size[0], 1, w.kernel[0], 1, w.stride[0], 1, w.dilation[0],
                0, w.pad_begin[0]};
    return {w.in_size[0], w.in_size[1], w.out_size[0], w.out_size[1], w.kernel[0], w.kernel[1],
            w.stride[0],  w.stride[1],  w.dilation[0], w.dilation[1], w.pad_begin[0],
            w.pad_begin[1]};
}

// A half-open index range.
struct Span {
    int64_t lo, hi;
};

// The steps o in [0, count) whose index first + o * step lies in [0, size).
inline Span inside(int64_t first, int64_t count, int64_t step, int64_t size) {
    const int64_t lo = first >= 0 ? 0 : (-first + step - 1) / step;
    const int64_t hi = first >= size ? 0 : std::min(count, (size - 1 - first) / step + 1);
    return {std::min(lo, hi), hi};
}

// The output columns whose kernel column kx reads an input column inside [0, iw).
inline Span valid_cols(const Geo& g, int64_t kx) { return inside(g.ix(0, kx), g.ow, g.sw, g.iw); }

// Calls f(oy, ox, len, j) for every run of one sample's output positions [p0, p1) (p = oy * ow + ox)
// that lies on one output row in [oy0, oy1); j = p - p0 is the position's index in the range.
template <class F>
inline void for_each_run(const Geo& g, int64_t p0, int64_t p1, int64_t oy0, int64_t oy1, F&& f) {
    if (p0 >= p1) return;
    const int64_t first = std::max(oy0, p0 / g.ow), last = std::min(oy1, (p1 - 1) / g.ow + 1);
    for (int64_t oy = first; oy < last; ++oy) {
        const int64_t a = std::max(p0, oy * g.ow), b = std::min(p1, (oy + 1) * g.ow);
        f(oy, a - oy * g.ow, b - a, a - p0);
    }
}

}  // namespace onnxdtd::detail
