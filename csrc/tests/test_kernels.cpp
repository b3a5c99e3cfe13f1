// C++ tests of onnxdtd::kernels: z+ passes through a conv and a dense layer against hand-computed
// numbers, a grouped/strided/padded conv against a direct loop implementation, conservation, and
// the pooling kernels. Exit code 0 when every check passes.
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "onnxdtd/kernels.hpp"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    if (!ok) ++failures;
}

template <class T>
bool close(const std::vector<T>& got, const std::vector<T>& want, double rtol, double atol) {
    if (got.size() != want.size()) return false;
    for (size_t i = 0; i < got.size(); ++i)
        if (!(std::fabs(double(got[i]) - double(want[i])) <= atol + rtol * std::fabs(double(want[i])))) {
            std::printf("     at %zu: got %.17g, want %.17g\n", i, double(got[i]), double(want[i]));
            return false;
        }
    return true;
}

template <class T>
double sum(const std::vector<T>& v) {
    double s = 0;
    for (T x : v) s += x;
    return s;
}

// z+ through a 1-D conv, by hand: x = [1, 2, 3], w = [1, -1] -> w+ = [1, 0].
// D = [1, 2]; R = [1, 1]; S = R / D = [1, 0.5]; conv^T(S, w+) = [1, 0.5, 0]; R_in = x * that = [1, 1, 0].
template <class T>
void conv_by_hand() {
    std::vector<T> x{1, 2, 3}, wp{1, 0}, r{1, 1}, out(3, T(0));
    onnxdtd::ConvShape s;
    s.n = 1, s.c = 1, s.cout = 1, s.group = 1;
    s.win.rank = 1;
    s.win.in_size = {3, 1}, s.win.out_size = {2, 1}, s.win.kernel = {2, 1};
    onnxdtd::Term<T> t;
    t.x = x.data(), t.w = wp.data();
    onnxdtd::conv_group<T>(s, {t}, r.data(), nullptr, nullptr, 0, 1.0, 0.0, out.data());
    const std::string type = sizeof(T) == 4 ? "float" : "double";
    check(close(out, std::vector<T>{1, 1, 0}, 1e-6, 0), "conv z+ by hand (" + type + ")");
    check(std::fabs(sum(out) - sum(r)) < 1e-6, "conv z+ conserves relevance");
}

// z+ through a dense layer, by hand: x = [1, 2], w = [[1, -1], [2, 1]] -> w+ = [[1, 0], [2, 1]].
// D = [1, 4]; R = [1, 2]; S = [1, 0.5]; S @ w+ = [2, 0.5]; R_in = [2, 1] (sum 3 = sum R).
template <class T>
void dense_by_hand() {
    std::vector<T> x{1, 2}, wp{1, 0, 2, 1}, r{1, 2}, out(2, T(0));
    onnxdtd::Term<T> t;
    t.x = x.data(), t.w = wp.data();
    onnxdtd::dense_group<T>({1, 2, 2}, {t}, r.data(), nullptr, nullptr, 0, 1.0, 0.0, out.data());
    check(close(out, std::vector<T>{2, 1}, 1e-6, 0), "dense z+ by hand");
    check(std::fabs(sum(out) - sum(r)) < 1e-6, "dense z+ conserves relevance");
    // The same with the denominator given, a mask that keeps only output 1, and coeff 2.
    std::vector<T> d{1, 4}, z{-1, 1}, masked(2, T(0));
    onnxdtd::dense_group<T>({1, 2, 2}, {t}, r.data(), d.data(), z.data(), +1, 2.0, 0.0, masked.data());
    check(close(masked, std::vector<T>{2 * 1 * 0.5 * 2, 2 * 2 * 0.5 * 1}, 1e-6, 0), "dense with denom, mask, coeff");
}

// Direct loops: out += coeff * sum_t sign_t x_t * conv^T(R / stab(sum_t sign_t (conv(x_t) + b_t))).
void conv_direct(const onnxdtd::ConvShape& s, const std::vector<onnxdtd::Term<double>>& terms,
                 const std::vector<double>& r, double coeff, double eps, std::vector<double>& out) {
    const auto& w = s.win;
    const int64_t N = s.n, C = s.c, Co = s.cout, G = s.group, Cg = Co / G, Ci = C / G;
    const int64_t H = w.in_size[0], W = w.in_size[1], OH = w.out_size[0], OW = w.out_size[1];
    const int64_t KH = w.kernel[0], KW = w.kernel[1];
    auto at = [&](int64_t oy, int64_t ky, int64_t ox, int64_t kx, int64_t& iy, int64_t& ix) {
        iy = oy * w.stride[0] + ky * w.dilation[0] - w.pad_begin[0];
        ix = ox * w.stride[1] + kx * w.dilation[1] - w.pad_begin[1];
        return iy >= 0 && iy < H && ix >= 0 && ix < W;
    };
    std::vector<double> D(N * Co * OH * OW, 0.0);
    for (const auto& t : terms)
        for (int64_t n = 0; n < N; ++n)
            for (int64_t co = 0; co < Co; ++co)
                for (int64_t oy = 0; oy < OH; ++oy)
                    for (int64_t ox = 0; ox < OW; ++ox) {
                        double acc = t.b ? t.b[co] : 0.0;
                        const int64_t g = co / Cg;
                        for (int64_t ci = 0; ci < Ci; ++ci)
                            for (int64_t ky = 0; ky < KH; ++ky)
                                for (int64_t kx = 0; kx < KW; ++kx) {
                                    int64_t iy, ix;
                                    if (!at(oy, ky, ox, kx, iy, ix)) continue;
                                    const int64_t c = g * Ci + ci;
                                    acc += t.w[((co * Ci + ci) * KH + ky) * KW + kx] *
                                           t.x[(((t.x_broadcast ? 0 : n) * C + c) * H + iy) * W + ix];
                                }
                        D[((n * Co + co) * OH + oy) * OW + ox] += t.sign * acc;
                    }
    for (const auto& t : terms)
        for (int64_t n = 0; n < N; ++n)
            for (int64_t co = 0; co < Co; ++co)
                for (int64_t oy = 0; oy < OH; ++oy)
                    for (int64_t ox = 0; ox < OW; ++ox) {
                        const int64_t o = ((n * Co + co) * OH + oy) * OW + ox;
                        const double sv = r[o] / (D[o] >= 0 ? D[o] + eps : D[o] - eps);
                        const int64_t g = co / Cg;
                        for (int64_t ci = 0; ci < Ci; ++ci)
                            for (int64_t ky = 0; ky < KH; ++ky)
                                for (int64_t kx = 0; kx < KW; ++kx) {
                                    int64_t iy, ix;
                                    if (!at(oy, ky, ox, kx, iy, ix)) continue;
                                    const int64_t c = g * Ci + ci;
                                    const int64_t i = ((n * C + c) * H + iy) * W + ix;
                                    const double xv = t.x[(((t.x_broadcast ? 0 : n) * C + c) * H + iy) * W + ix];
                                    out[i] += coeff * t.sign * xv * t.w[((co * Ci + ci) * KH + ky) * KW + kx] * sv;
                                }
                    }
}

void conv_against_direct() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> u(0.1, 1.0), v(-1.0, 1.0);
    onnxdtd::ConvShape s;
    s.n = 3, s.c = 4, s.cout = 6, s.group = 2;
    auto& w = s.win;
    w.rank = 2, w.in_size = {7, 6}, w.kernel = {3, 2}, w.stride = {2, 1}, w.dilation = {1, 2};
    w.pad_begin = {1, 0}, w.pad_end = {1, 2};
    for (int i = 0; i < 2; ++i)
        w.out_size[i] = onnxdtd::pooled_size(w.in_size[i], w.kernel[i], w.stride[i], w.dilation[i],
                                             w.pad_begin[i], w.pad_end[i]);
    const int64_t xsize = s.n * s.c * 7 * 6, wsize = s.cout * (s.c / s.group) * 3 * 2;
    const int64_t rsize = s.n * s.cout * w.out_size[0] * w.out_size[1];
    std::vector<double> x(xsize), low(xsize / s.n), wt(wsize), wp(wsize), wn(wsize), b(s.cout), r(rsize);
    for (auto& e : x) e = u(rng);
    for (auto& e : low) e = -u(rng);
    for (auto& e : wt) e = v(rng);
    for (size_t i = 0; i < wt.size(); ++i) wp[i] = std::max(wt[i], 0.0), wn[i] = std::min(wt[i], 0.0);
    for (auto& e : b) e = v(rng);
    for (auto& e : r) e = u(rng);

    // z+ (x, w+): conserves relevance.
    {
        onnxdtd::Term<double> t;
        t.x = x.data(), t.w = wp.data();
        std::vector<double> got(xsize, 0.0), want(xsize, 0.0);
        onnxdtd::conv_group<double>(s, {t}, r.data(), nullptr, nullptr, 0, 1.0, 1e-12, got.data());
        conv_direct(s, {t}, r, 1.0, 1e-12, want);
        check(close(got, want, 1e-12, 1e-14), "grouped strided padded dilated conv z+ = direct loops");
    }
    // Conservation where every window sees a positive contribution: strictly positive weights.
    {
        std::vector<double> wabs(wsize);
        for (size_t i = 0; i < wt.size(); ++i) wabs[i] = std::fabs(wt[i]) + 0.1;
        onnxdtd::ConvShape s2 = s;
        s2.win.pad_end = {1, 1};
        s2.win.dilation = {1, 1};
        for (int i = 0; i < 2; ++i)
            s2.win.out_size[i] = onnxdtd::pooled_size(s2.win.in_size[i], s2.win.kernel[i], s2.win.stride[i],
                                                      1, s2.win.pad_begin[i], s2.win.pad_end[i]);
        std::vector<double> r2(s2.n * s2.cout * s2.win.out_elems(), 0.0), got(xsize, 0.0);
        for (auto& e : r2) e = u(rng);
        onnxdtd::Term<double> t;
        t.x = x.data(), t.w = wabs.data();
        onnxdtd::conv_group<double>(s2, {t}, r2.data(), nullptr, nullptr, 0, 1.0, 1e-12, got.data());
        check(std::fabs(sum(got) - sum(r2)) < 1e-9 * sum(r2), "grouped strided conv z+ conserves relevance");
    }
    // A z^B-like group: x with w, minus the broadcast low bound with w+, plus a bias; coeff 0.5.
    {
        onnxdtd::Term<double> t0, t1;
        t0.x = x.data(), t0.w = wt.data(), t0.b = b.data();
        t1.x = low.data(), t1.x_broadcast = true, t1.w = wp.data(), t1.sign = -1.0;
        std::vector<double> got(xsize, 0.0), want(xsize, 0.0);
        onnxdtd::conv_group<double>(s, {t0, t1}, r.data(), nullptr, nullptr, 0, 0.5, 1e-6, got.data());
        conv_direct(s, {t0, t1}, r, 0.5, 1e-6, want);
        check(close(got, want, 1e-10, 1e-12), "two-term conv group with bias and broadcast x = direct loops");
    }
    // float agrees with double.
    {
        std::vector<float> xf(x.begin(), x.end()), wf(wp.begin(), wp.end()), rf(r.begin(), r.end()), got(xsize, 0.f);
        onnxdtd::Term<float> t;
        t.x = xf.data(), t.w = wf.data();
        onnxdtd::conv_group<float>(s, {t}, rf.data(), nullptr, nullptr, 0, 1.0, 1e-6, got.data());
        std::vector<double> want(xsize, 0.0);
        onnxdtd::Term<double> td;
        td.x = x.data(), td.w = wp.data();
        conv_direct(s, {td}, r, 1.0, 1e-6, want);
        std::vector<float> wantf(want.begin(), want.end());
        check(close(got, wantf, 1e-4, 1e-6), "float conv z+ = double direct loops");
    }
}

// A conv whose columns exceed the column buffer: the tiles split samples, and each input plane
// collects its gradient over several tiles.
void conv_split_tiles() {
    std::mt19937 rng(11);
    std::uniform_real_distribution<double> u(0.1, 1.0);
    onnxdtd::ConvShape s;
    s.n = 2, s.c = 2, s.cout = 2, s.group = 1;
    auto& w = s.win;
    w.rank = 2, w.in_size = {500, 501}, w.kernel = {3, 3}, w.pad_begin = {1, 1}, w.pad_end = {1, 1};
    w.out_size = {500, 501};
    std::vector<double> x(s.n * s.c * w.in_elems()), wt(s.cout * s.c * 9), r(s.n * s.cout * w.out_elems());
    for (auto& e : x) e = u(rng);
    for (auto& e : wt) e = u(rng);
    for (auto& e : r) e = u(rng);
    onnxdtd::Term<double> t;
    t.x = x.data(), t.w = wt.data();
    std::vector<double> got(x.size(), 0.0), want(x.size(), 0.0);
    onnxdtd::conv_group<double>(s, {t}, r.data(), nullptr, nullptr, 0, 1.0, 1e-12, got.data());
    conv_direct(s, {t}, r, 1.0, 1e-12, want);
    check(close(got, want, 1e-12, 1e-14), "conv over split column tiles = direct loops");
}

// A dense layer big enough to be streamed (weights of both terms > 16 MiB, 3 rows): a broadcast
// second term, a bias and a mask, against direct loops.
void dense_streamed() {
    std::mt19937 rng(5);
    std::uniform_real_distribution<double> u(0.1, 1.0), v(-1.0, 1.0);
    const int64_t M = 3, K = 2100, J = 1000;
    std::vector<double> x(M * K), low(K), w0(J * K), w1(J * K), b(J), r(M * J), z(M * J);
    for (auto& e : x) e = u(rng);
    for (auto& e : low) e = -u(rng);
    for (auto& e : w0) e = u(rng);
    for (auto& e : w1) e = 0.5 * u(rng);
    for (auto& e : b) e = v(rng);
    for (auto& e : r) e = u(rng);
    for (auto& e : z) e = v(rng);
    onnxdtd::Term<double> t0, t1;
    t0.x = x.data(), t0.w = w0.data(), t0.b = b.data();
    t1.x = low.data(), t1.x_broadcast = true, t1.w = w1.data(), t1.sign = -1.0;
    std::vector<double> got(M * K, 0.0), want(M * K, 0.0);
    onnxdtd::dense_group<double>({M, K, J}, {t0, t1}, r.data(), nullptr, z.data(), +1, 1.5, 1e-6, got.data());
    for (int64_t m = 0; m < M; ++m)
        for (int64_t j = 0; j < J; ++j) {
            double d0 = b[j], d1 = 0;
            for (int64_t k = 0; k < K; ++k) d0 += x[m * K + k] * w0[j * K + k], d1 += low[k] * w1[j * K + k];
            const double d = d0 - d1, sv = z[m * J + j] > 0 ? r[m * J + j] / (d >= 0 ? d + 1e-6 : d - 1e-6) : 0.0;
            for (int64_t k = 0; k < K; ++k)
                want[m * K + k] += 1.5 * sv * (x[m * K + k] * w0[j * K + k] - low[k] * w1[j * K + k]);
        }
    check(close(got, want, 1e-10, 1e-12), "streamed dense group with bias, broadcast x and mask = direct loops");
}

void pooling() {
    // 1-D max pooling, kernel 2, stride 1, pad 1 each side: a = [1, 3, 2]; windows over [pad, 1, 3, 2, pad]:
    // [p,1] -> 1 (index 0), [1,3] -> 3 (1), [3,2] -> 3 (1), [2,p] -> 2 (2).
    onnxdtd::PoolShape s;
    s.n = 1, s.c = 1;
    s.win.rank = 1, s.win.in_size = {3, 1}, s.win.out_size = {4, 1}, s.win.kernel = {2, 1};
    s.win.pad_begin = {1, 0}, s.win.pad_end = {1, 0};
    std::vector<double> a{1, 3, 2}, r{1, 10, 100, 1000}, out(3);
    onnxdtd::maxpool_winner<double>(s, a.data(), r.data(), out.data());
    check(close(out, std::vector<double>{1, 110, 1000}, 0, 0), "maxpool_winner by hand");
    onnxdtd::maxpool_proportional<double>(s, a.data(), r.data(), 0.0, out.data());
    check(close(out, std::vector<double>{1 + 10.0 / 4, 3 * (10.0 / 4 + 100.0 / 5), 2 * (100.0 / 5 + 1000.0 / 2)},
                1e-15, 0),
          "maxpool_proportional by hand");
    std::vector<double> sums(4), back(3);
    onnxdtd::sumpool<double>(s, a.data(), sums.data());
    check(close(sums, std::vector<double>{1, 4, 5, 2}, 0, 0), "sumpool by hand");
    onnxdtd::unpool<double>(s, r.data(), back.data());
    check(close(back, std::vector<double>{11, 110, 1100}, 0, 0), "unpool by hand");
    std::vector<double> x0{1, 2}, x1{3, -1}, rr{4, 2}, o0(2), o1(2);
    onnxdtd::add_split<double>(2, {x0.data(), x1.data()}, rr.data(), 0.0, {o0.data(), o1.data()});
    check(close(o0, std::vector<double>{1, 4}, 1e-15, 0) && close(o1, std::vector<double>{3, -2}, 1e-15, 0),
          "add_split by hand");
}

void bad_shapes() {
    onnxdtd::ConvShape s;
    s.n = 1, s.c = 3, s.cout = 4, s.group = 2;  // group does not divide c
    std::vector<double> buf(64);
    onnxdtd::Term<double> t;
    t.x = buf.data(), t.w = buf.data();
    bool threw = false;
    try {
        onnxdtd::conv_group<double>(s, {t}, buf.data(), nullptr, nullptr, 0, 1.0, 0.0, buf.data());
    } catch (const std::invalid_argument&) {
        threw = true;
    }
    check(threw, "conv_group rejects a group that does not divide the channels");
}

}  // namespace

int main() {
    std::printf("onnxdtd kernels: BLAS %s, OpenMP %s (%d threads)\n", onnxdtd::blas_name(),
                onnxdtd::has_openmp() ? "on" : "off", onnxdtd::max_threads());
    conv_by_hand<float>();
    conv_by_hand<double>();
    dense_by_hand<float>();
    dense_by_hand<double>();
    conv_against_direct();
    conv_split_tiles();
    dense_streamed();
    pooling();
    bad_shapes();
    if (failures) std::printf("%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
