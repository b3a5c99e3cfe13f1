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

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// s(d) = d + eps if d >= 0 else d - eps (NaN stays NaN), as onnxdtd.rules.base.stabilize.
template <class T>
inline T stab(T d, T eps) {
    return d >= T(0) ? d + eps : d - eps;
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

// Calls f(n, oy, ox, len, j) for every run of output positions along one output row within the
// flattened column range [q0, q1), q = n * P + oy * ow + ox; j = q - q0 is the column index.
template <class F>
inline void for_each_run(const Geo& g, int64_t q0, int64_t q1, F&& f) {
    const int64_t P = g.out_elems();
    int64_t q = q0;
    while (q < q1) {
        const int64_t n = q / P, p = q % P, oy = p / g.ow, ox = p % g.ow;
        const int64_t len = std::min(g.ow - ox, q1 - q);
        f(n, oy, ox, len, q - q0);
        q += len;
    }
}

}  // namespace onnxdtd::detail
