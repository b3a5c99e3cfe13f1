// Explains a tiny two-layer ReLU network, y = W2 relu(W1 x + b1) + b2, with the z+ rule.
//
// The relevance starts as the explained output y[c] (all other outputs 0), goes back through the
// second dense layer, through the ReLU unchanged, and through the first dense layer onto the input.
// z+ terms carry no bias, so the relevance is conserved: sum(R_input) = y[c] (up to the stabilizer).
// Exit code 0 when it is, 1 otherwise.
#include <cmath>
#include <cstdio>
#include <vector>

#include <onnxdtd/kernels.hpp>

namespace {

// y = x @ w^T + b for one sample.
std::vector<double> dense(const std::vector<double>& x, const std::vector<double>& w,
                          const std::vector<double>& b) {
    const size_t j_count = b.size(), k_count = x.size();
    std::vector<double> y(j_count);
    for (size_t j = 0; j < j_count; ++j) {
        y[j] = b[j];
        for (size_t k = 0; k < k_count; ++k) y[j] += w[j * k_count + k] * x[k];
    }
    return y;
}

std::vector<double> positive_part(std::vector<double> w) {
    for (double& v : w) v = v > 0 ? v : 0;
    return w;
}

// R_in = x * (w+^T (R / stab(w+ x))): one z+ pass through a dense layer with the kernel.
std::vector<double> zplus(const std::vector<double>& x, const std::vector<double>& w, const std::vector<double>& r) {
    const std::vector<double> wp = positive_part(w);
    std::vector<double> out(x.size(), 0.0);
    onnxdtd::Term<double> term;
    term.x = x.data();
    term.w = wp.data();
    onnxdtd::DenseShape shape;
    shape.m = 1;
    shape.k = static_cast<int64_t>(x.size());
    shape.j = static_cast<int64_t>(r.size());
    onnxdtd::dense_group<double>(shape, {term}, r.data(), /*denom=*/nullptr, /*z=*/nullptr, /*mask=*/0,
                                 /*coeff=*/1.0, /*stabilizer=*/1e-9, out.data());
    return out;
}

void print(const char* name, const std::vector<double>& v) {
    std::printf("%-10s", name);
    for (double e : v) std::printf(" %9.5f", e);
    std::printf("\n");
}

}  // namespace

int main() {
    // 3 inputs -> 4 hidden ReLU units -> 2 outputs.
    const std::vector<double> x{0.5, 1.0, 0.25};
    const std::vector<double> w1{0.8, -0.5, 0.3,    //
                                 0.2, 0.4, -0.6,    //
                                 -0.7, 0.1, 0.9,    //
                                 0.5, 0.5, 0.5};
    const std::vector<double> b1{0.1, -0.2, 0.0, 0.05};
    const std::vector<double> w2{1.0, -0.5, 0.7, 0.3,  //
                                 -0.4, 0.9, 0.2, 0.6};
    const std::vector<double> b2{0.0, 0.1};

    std::vector<double> a = dense(x, w1, b1);
    for (double& v : a) v = v > 0 ? v : 0;  // ReLU
    const std::vector<double> y = dense(a, w2, b2);
    const size_t c = y[0] >= y[1] ? 0 : 1;  // explain the larger output

    std::vector<double> r_out(y.size(), 0.0);
    r_out[c] = y[c];
    const std::vector<double> r_hidden = zplus(a, w2, r_out);  // through dense 2 (input: the ReLU output)
    const std::vector<double> r_in = zplus(x, w1, r_hidden);   // ReLU passes relevance on; then dense 1

    print("input", x);
    print("hidden", a);
    print("output", y);
    print("R hidden", r_hidden);
    print("R input", r_in);
    double total = 0;
    for (double r : r_in) total += r;
    const bool ok = std::fabs(total - y[c]) <= 1e-6 * std::fabs(y[c]);
    std::printf("explained output y[%zu] = %.9f, sum of input relevance = %.9f: %s\n", c, y[c], total,
                ok ? "conserved" : "NOT conserved");
    return ok ? 0 : 1;
}
