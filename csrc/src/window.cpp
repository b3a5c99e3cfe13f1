// Window geometry and build information.
#include <stdexcept>
#include <string>

#include "blas.hpp"
#include "common.hpp"
#include "onnxdtd/kernels.hpp"

#ifndef ONNXDTD_BLAS_NAME
#define ONNXDTD_BLAS_NAME "unknown"
#endif

namespace onnxdtd {

int64_t Window::in_elems() const { return rank == 1 ? in_size[0] : in_size[0] * in_size[1]; }
int64_t Window::out_elems() const { return rank == 1 ? out_size[0] : out_size[0] * out_size[1]; }
int64_t Window::kernel_elems() const { return rank == 1 ? kernel[0] : kernel[0] * kernel[1]; }

int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t dilation, int64_t pad_begin,
                    int64_t pad_end) {
    const int64_t room = in + pad_begin + pad_end - (dilation * (kernel - 1) + 1);
    return room < 0 ? 0 : room / stride + 1;
}

void check_window(const Window& win, const std::string& what) {
    auto fail = [&](const std::string& msg) { throw std::invalid_argument(what + ": " + msg); };
    if (win.rank != 1 && win.rank != 2)
        fail("spatial rank must be 1 or 2, got " + std::to_string(win.rank));
    for (int i = 0; i < win.rank; ++i) {
        const std::string axis = " (spatial axis " + std::to_string(i) + ")";
        if (win.kernel[i] < 1) fail("kernel must be >= 1, got " + std::to_string(win.kernel[i]) + axis);
        if (win.stride[i] < 1) fail("stride must be >= 1, got " + std::to_string(win.stride[i]) + axis);
        if (win.dilation[i] < 1)
            fail("dilation must be >= 1, got " + std::to_string(win.dilation[i]) + axis);
        if (win.pad_begin[i] < 0 || win.pad_end[i] < 0)
            fail("pads must be >= 0, got " + std::to_string(win.pad_begin[i]) + ", " +
                 std::to_string(win.pad_end[i]) + axis);
        if (win.in_size[i] < 0 || win.out_size[i] < 0) fail("negative size" + axis);
        const int64_t most = pooled_size(win.in_size[i], win.kernel[i], win.stride[i],
                                         win.dilation[i], win.pad_begin[i], win.pad_end[i]);
        if (win.out_size[i] > most)
            fail("output size " + std::to_string(win.out_size[i]) + " does not fit input size " +
                 std::to_string(win.in_size[i]) + " with kernel " + std::to_string(win.kernel[i]) +
                 ", stride " + std::to_string(win.stride[i]) + ", dilation " +
                 std::to_string(win.dilation[i]) + " and pads " + std::to_string(win.pad_begin[i]) +
                 ", " + std::to_string(win.pad_end[i]) + " (at most " + std::to_string(most) + ")" +
                 axis);
    }
}

bool has_openmp() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

int max_threads() { return detail::thread_count(); }

const char* blas_name() { return ONNXDTD_BLAS_NAME; }

int blas_threads() { return blas::threads(); }

bool set_blas_threads(int n) {
    if (n < 1) throw std::invalid_argument("set_blas_threads: n must be >= 1, got " + std::to_string(n));
    return blas::set_threads(n);
}

}  // namespace onnxdtd
