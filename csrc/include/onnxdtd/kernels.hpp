// onnxdtd kernels: the compiled rule passes of Deep Taylor Decomposition / LRP.
//
// The functions work on raw, C-contiguous (row-major) buffers described by small shape structs;
// there is no Python in this library. The semantics are those of docs/kernels.md and of the numpy
// reference backend (onnxdtd/backends/numpy_backend.py):
//
//   stab(d) = d + eps if d >= 0 else d - eps             (eps = T(stabilizer), sgn(0) = +1)
//
//   conv_group / dense_group:
//     D   = denom, or sum_t sign_t * (f(x_t; w_t) + b_t)   (f: grouped convolution / x @ w^T)
//     S   = relevance / stab(D)   [* (z > 0) or * (z < 0) when mask is +1 / -1]
//     out += T(coeff * sign_t) * x_t (.) f^T(S; w_t)        for every term t
//
// A term's x whose leading (batch) dimension is 1 broadcasts over the batch (x_broadcast = true).
// Shapes are checked for consistency (std::invalid_argument on a violation); pointers are trusted.
// float and double are instantiated (in the library).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace onnxdtd {

// Sliding-window geometry over rank 1 or 2 spatial axes. Window position o of output index y along
// an axis reads input index y*stride + o*dilation - pad_begin; padded positions read as 0 (conv,
// sums) or are skipped (max pooling). pad_end already includes any ceil-mode overhang.
struct Window {
    int rank = 2;                            // spatial rank: 1 or 2 (only the first `rank` entries count)
    std::array<int64_t, 2> in_size{1, 1};    // spatial input size
    std::array<int64_t, 2> out_size{1, 1};   // spatial output size
    std::array<int64_t, 2> kernel{1, 1};
    std::array<int64_t, 2> stride{1, 1};
    std::array<int64_t, 2> dilation{1, 1};
    std::array<int64_t, 2> pad_begin{0, 0};
    std::array<int64_t, 2> pad_end{0, 0};

    int64_t in_elems() const;      // prod(in_size)
    int64_t out_elems() const;     // prod(out_size)
    int64_t kernel_elems() const;  // prod(kernel)
};

// Output size of a window along one axis: floor((in + pad_begin + pad_end - span) / stride) + 1,
// span = dilation * (kernel - 1) + 1; 0 when the padded input is shorter than the span.
int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t pad_begin,
                    int64_t pad_end);

// Throws std::invalid_argument unless rank is 1 or 2, kernel/stride/dilation >= 1, pads >= 0,
// sizes >= 0, and every window of out_size fits in the padded input. `what` prefixes the message.
void check_window(const Window& win, const std::string& what = "window");

// One term of a rule group: input x, weight w, optional bias b (nullptr: none), sign.
template <class T>
struct Term {
    const T* x = nullptr;
    bool x_broadcast = false;  // x holds one sample that every sample of the batch reuses
    const T* w = nullptr;
    const T* b = nullptr;
    double sign = 1.0;
};

// Grouped convolution: x (n, c, *in_size), w (cout, c/group, *kernel), b (cout),
// relevance/denom/z (n, cout, *out_size), out (n, c, *in_size).
struct ConvShape {
    int64_t n = 1, c = 1, cout = 1, group = 1;
    Window win;
};

// Dense: x (m, k), w (j, k), b (j), relevance/denom/z (m, j), out (m, k).
struct DenseShape {
    int64_t m = 1, k = 1, j = 1;
};

// Pooling: a/x (n, c, *in_size); relevance/s (n, c, *out_size).
struct PoolShape {
    int64_t n = 1, c = 1;
    Window win;
};

// Rule passes. denom and z may be nullptr (z only when mask == 0); mask is 0, +1 or -1.
template <class T>
void conv_group(const ConvShape& shape, const std::vector<Term<T>>& terms, const T* relevance,
                const T* denom, const T* z, int mask, double coeff, double stabilizer, T* out);

template <class T>
void dense_group(const DenseShape& shape, const std::vector<Term<T>>& terms, const T* relevance,
                 const T* denom, const T* z, int mask, double coeff, double stabilizer, T* out);

// Pooling and sums. Outputs are written, not accumulated.
// maxpool_winner: each output's relevance goes to the first maximum of its window (row-major
// kernel order, padding never wins); out has the shape of a.
template <class T>
void maxpool_winner(const PoolShape& shape, const T* a, const T* relevance, T* out);

// maxpool_proportional: out = a (.) unpool(relevance / stab(sumpool(a))).
template <class T>
void maxpool_proportional(const PoolShape& shape, const T* a, const T* relevance, double stabilizer,
                          T* out);

// sumpool: window sums with zero padding, out (n, c, *out_size).
template <class T>
void sumpool(const PoolShape& shape, const T* x, T* out);

// unpool: the transpose of sumpool, s (n, c, *out_size) -> out (n, c, *in_size).
template <class T>
void unpool(const PoolShape& shape, const T* s, T* out);

// add_split: R_k = x_k (.) relevance / stab(sum_k x_k) over `size` elements.
template <class T>
void add_split(int64_t size, const std::vector<const T*>& inputs, const T* relevance,
               double stabilizer, const std::vector<T*>& outs);

// Build information: whether OpenMP is compiled in, its thread count, and the BLAS in use.
bool has_openmp();
int max_threads();
const char* blas_name();

// The BLAS's thread count (OpenBLAS), or -1 where the BLAS cannot tell. When it is 1, the kernels
// split their GEMMs over the OpenMP threads themselves, so that a single thread pool does all the
// work; with a multi-threaded BLAS its idle threads spin against the OpenMP loops between calls.
// set_blas_threads changes the BLAS's global setting and returns false where it cannot (not OpenBLAS).
// onnxdtd._core sets its private OpenBLAS (the scipy-openblas32 wheel's) to 1 thread at import.
int blas_threads();
bool set_blas_threads(int n);


}  // namespace onnxdtd
