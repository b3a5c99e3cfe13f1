// onnxdtd._core: the pybind11 boundary of the C++ kernels (docs/kernels.md).
//
// Arguments come in as plain Python objects and are checked here before any pointer is taken:
// every array must be a numpy.ndarray of float32 or float64 (all the same within one call;
// otherwise TypeError), C-contiguous, aligned, of the right rank and shape (otherwise ValueError),
// and `out` must be writeable and must not overlap an input. Nothing is converted or copied
// silently. Messages name the argument, what was expected and what was got. The kernels run with
// the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "onnxdtd/kernels.hpp"

namespace py = pybind11;

namespace {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s) {
    std::ostringstream os;
    os << '(';
    for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
    os << (s.size() == 1 ? ",)" : ")");
    return os.str();
}

std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

Shape shape_of(const py::array& a) {
    return Shape(a.shape(), a.shape() + a.ndim());
}

[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }
[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }

enum class Dtype { f32, f64 };

bool native_order(char b) {
    if (b == '=' || b == '|') return true;
    const uint16_t one = 1;
    const bool little = *reinterpret_cast<const uint8_t*>(&one) == 1;
    return b == (little ? '<' : '>');
}

// Checks arrays one by one and remembers the dtype of the first, which all others must share.
class Arrays {
public:
    py::array get(py::handle h, const std::string& name) {
        if (!py::isinstance<py::array>(h))
            type_error(name + ": expected a numpy.ndarray of float32 or float64, got " + type_name(h));
        auto a = py::reinterpret_borrow<py::array>(h);
        const py::dtype dt = a.dtype();
        Dtype d;
        if (dt.num() == 11 && native_order(dt.byteorder()))  // NPY_FLOAT
            d = Dtype::f32;
        else if (dt.num() == 12 && native_order(dt.byteorder()))  // NPY_DOUBLE
            d = Dtype::f64;
        else
            type_error(name + ": expected dtype float32 or float64, got " + std::string(py::str(dt)));
        if (!have_) {
            have_ = true;
            dtype_ = d;
            first_ = name;
        } else if (d != dtype_) {
            type_error(name + ": expected dtype " + dtype_name() + " (the dtype of " + first_ +
                       "; all arrays of one call share it), got " + std::string(py::str(dt)));
        }
        if (!(a.flags() & py::array::c_style))
            value_error(name + ": expected a C-contiguous array, got one with shape " +
                        shape_str(shape_of(a)) + " and strides " + strides_str(a) +
                        " (use numpy.ascontiguousarray)");
        if (!(a.flags() & 0x0100))  // NPY_ARRAY_ALIGNED
            value_error(name + ": expected an aligned array");
        return a;
    }

    // An array or None.
    py::object optional(py::handle h, const std::string& name) {
        if (h.is_none()) return py::none();
        return get(h, name);
    }

    // The output array: checked like an input, and writeable.
    py::array output(py::handle h, const std::string& name) {
        py::array a = get(h, name);
        if (!a.writeable()) value_error(name + ": expected a writeable array, got a read-only one");
        return a;
    }

    Dtype dtype() const { return dtype_; }
    std::string dtype_name() const { return dtype_ == Dtype::f32 ? "float32" : "float64"; }

private:
    static std::string strides_str(const py::array& a) {
        return shape_str(Shape(a.strides(), a.strides() + a.ndim()));
    }
    bool have_ = false;
    Dtype dtype_ = Dtype::f32;
    std::string first_;
};

void expect_rank(const py::array& a, const std::string& name, py::ssize_t rank, const std::string& layout) {
    if (a.ndim() != rank)
        value_error(name + ": expected rank " + std::to_string(rank) + " " + layout + ", got shape " +
                    shape_str(shape_of(a)));
}

void expect_shape(const py::array& a, const std::string& name, const Shape& expected,
                  const std::string& why) {
    if (shape_of(a) != expected)
        value_error(name + ": expected shape " + shape_str(expected) + why + ", got shape " +
                    shape_str(shape_of(a)));
}

// A list or tuple, as a vector of its items.
std::vector<py::object> items(py::handle h, const std::string& name, const std::string& of) {
    if (!py::isinstance<py::list>(h) && !py::isinstance<py::tuple>(h))
        type_error(name + ": expected a list of " + of + ", got " + type_name(h));
    std::vector<py::object> out;
    for (py::handle item : h) out.push_back(py::reinterpret_borrow<py::object>(item));
    return out;
}

void expect_len(const std::vector<py::object>& v, const std::string& name, size_t n, const std::string& why) {
    if (v.size() != n)
        value_error(name + ": expected " + std::to_string(n) + " entries" + why + ", got " +
                    std::to_string(v.size()));
}

int64_t to_int(py::handle h, const std::string& name) {
    const bool array0d = py::isinstance<py::array>(h) && py::reinterpret_borrow<py::array>(h).ndim() == 0;
    if (PyFloat_Check(h.ptr()) || !PyIndex_Check(h.ptr()) ||
        (py::isinstance<py::array>(h) && !array0d))
        type_error(name + ": expected an int, got " + type_name(h));
    const Py_ssize_t v = PyNumber_AsSsize_t(h.ptr(), PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        type_error(name + ": expected an int that fits 64 bits");
    }
    return static_cast<int64_t>(v);
}

double to_double(py::handle h, const std::string& name) {
    if (h.is_none() || py::isinstance<py::str>(h) || py::isinstance<py::bytes>(h) ||
        (py::isinstance<py::array>(h) && py::reinterpret_borrow<py::array>(h).ndim() != 0))
        type_error(name + ": expected a float, got " + type_name(h));
    const double v = PyFloat_AsDouble(h.ptr());
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        type_error(name + ": expected a float, got " + type_name(h));
    }
    return v;
}

// A sequence of n ints (a bare int stands for n copies of itself), each >= lowest.
Shape ints(py::handle h, const std::string& name, size_t n, int64_t lowest, const std::string& what) {
    Shape out;
    const bool is_array = py::isinstance<py::array>(h);
    if ((!is_array && PyIndex_Check(h.ptr()) && !PyFloat_Check(h.ptr())) ||
        (is_array && py::reinterpret_borrow<py::array>(h).ndim() == 0)) {
        out.assign(n, to_int(h, name));
    } else {
        if (py::isinstance<py::str>(h) || !PySequence_Check(h.ptr()))
            type_error(name + ": expected a sequence of " + std::to_string(n) + " ints (" + what +
                       "), got " + type_name(h));
        const py::sequence seq = py::reinterpret_borrow<py::sequence>(h);
        if (seq.size() != n)
            value_error(name + ": expected " + std::to_string(n) + " entries (" + what + "), got " +
                        std::to_string(seq.size()));
        for (size_t i = 0; i < n; ++i) out.push_back(to_int(seq[i], name + "[" + std::to_string(i) + "]"));
    }
    for (size_t i = 0; i < n; ++i)
        if (out[i] < lowest)
            value_error(name + ": expected entries >= " + std::to_string(lowest) + ", got " + shape_str(out));
    return out;
}

// Spatial rank from an array of layout (N, C, *spatial).
int spatial_rank(const py::array& a, const std::string& name, const std::string& layout) {
    if (a.ndim() != 3 && a.ndim() != 4)
        value_error(name + ": expected rank 3 or 4 " + layout + " (1 or 2 spatial axes), got shape " +
                    shape_str(shape_of(a)));
    return static_cast<int>(a.ndim() - 2);
}

struct Geometry {
    Shape kernel, strides, dilations, pads;
};

// The window arguments; `kernel` is nullptr where the weights give it (conv).
Geometry geometry(const py::handle* kernel, py::handle strides, py::handle dilations, py::handle pads, int sd) {
    Geometry g;
    const std::string axes = std::to_string(sd) + (sd == 1 ? " spatial axis" : " spatial axes");
    if (kernel != nullptr) g.kernel = ints(*kernel, "kernel", sd, 1, "one per spatial axis; " + axes);
    g.strides = ints(strides, "strides", sd, 1, "one per spatial axis; " + axes);
    g.dilations = ints(dilations, "dilations", sd, 1, "one per spatial axis; " + axes);
    g.pads = ints(pads, "pads", 2 * sd, 0, "all begins, then all ends; " + axes);
    return g;
}

onnxdtd::Window make_window(const Geometry& g, const Shape& in, const Shape& out, const Shape& kernel) {
    onnxdtd::Window w;
    w.rank = static_cast<int>(in.size());
    for (int i = 0; i < w.rank; ++i) {
        w.in_size[i] = in[i];
        w.out_size[i] = out[i];
        w.kernel[i] = kernel[i];
        w.stride[i] = g.strides[i];
        w.dilation[i] = g.dilations[i];
        w.pad_begin[i] = g.pads[i];
        w.pad_end[i] = g.pads[w.rank + i];
    }
    return w;
}

// The spatial output size of the window over `in`: floor mode, with any ceil-mode overhang already
// in the end pads (docs/kernels.md). Relevance shapes must match it exactly.
Shape window_out(const Geometry& g, const Shape& in, const Shape& kernel) {
    const size_t sd = in.size();
    Shape out(sd);
    for (size_t i = 0; i < sd; ++i)
        out[i] = onnxdtd::pooled_size(in[i], kernel[i], g.strides[i], g.dilations[i], g.pads[i], g.pads[sd + i]);
    return out;
}

std::string geometry_str(const Geometry& g, const Shape& kernel) {
    return "kernel " + shape_str(kernel) + ", strides " + shape_str(g.strides) + ", dilations " +
           shape_str(g.dilations) + ", pads " + shape_str(g.pads);
}

// `out` must not share memory with any input (results would depend on the order of the loops).
void expect_no_overlap(const py::array& out, const std::vector<std::pair<py::object, std::string>>& inputs) {
    auto range = [](const py::array& a) {
        const char* p = static_cast<const char*>(a.data());
        return std::make_pair(p, p + a.nbytes());
    };
    const auto o = range(out);
    if (o.first == o.second) return;
    for (const auto& [obj, name] : inputs) {
        if (obj.is_none()) continue;
        const auto r = range(py::reinterpret_borrow<py::array>(obj));
        if (r.first < o.second && o.first < r.second)
            value_error("out: must not share memory with " + name);
    }
}

template <class T>
const T* ptr(const py::object& a) {
    return a.is_none() ? nullptr : static_cast<const T*>(py::reinterpret_borrow<py::array>(a).data());
}

// ---------------------------------------------------------------------------------------------
// Rule passes.

struct GroupArgs {
    std::vector<py::array> xs, ws;
    std::vector<py::object> bs;
    std::vector<double> signs;
    std::vector<bool> broadcast;
    py::array relevance, out;
    py::object denom, z;
    int mask = 0;
    double coeff = 1.0, stabilizer = 0.0;
};

// The parts common to conv_group and dense_group: lists, scalars, relevance/denom/z, out.
GroupArgs group_args(Arrays& arrays, py::handle xs, py::handle ws, py::handle bs, py::handle signs,
                     py::handle relevance, py::handle denom, py::handle z, py::handle mask,
                     py::handle coeff, py::handle stabilizer, py::handle out) {
    GroupArgs g;
    g.relevance = arrays.get(relevance, "relevance");
    const auto xl = items(xs, "xs", "arrays"), wl = items(ws, "ws", "arrays");
    const auto bl = items(bs, "bs", "arrays or None"), sl = items(signs, "signs", "floats");
    const size_t n = xl.size();
    const std::string per = " (one per entry of xs, which has " + std::to_string(n) + ")";
    expect_len(wl, "ws", n, per);
    expect_len(bl, "bs", n, per);
    expect_len(sl, "signs", n, per);
    for (size_t t = 0; t < n; ++t) {
        const std::string i = "[" + std::to_string(t) + "]";
        g.xs.push_back(arrays.get(xl[t], "xs" + i));
        g.ws.push_back(arrays.get(wl[t], "ws" + i));
        g.bs.push_back(arrays.optional(bl[t], "bs" + i));
        g.signs.push_back(to_double(sl[t], "signs" + i));
    }
    g.denom = arrays.optional(denom, "denom");
    g.z = arrays.optional(z, "z");
    const int64_t m = to_int(mask, "mask");
    if (m < -1 || m > 1) value_error("mask: expected 0, 1 or -1, got " + std::to_string(m));
    g.mask = static_cast<int>(m);
    if (g.mask != 0 && g.z.is_none())
        value_error("z: expected an array of the relevance's shape when mask is " + std::to_string(m) + ", got None");
    g.coeff = to_double(coeff, "coeff");
    g.stabilizer = to_double(stabilizer, "stabilizer");
    g.out = arrays.output(out, "out");
    const Shape rs = shape_of(g.relevance);
    if (!g.denom.is_none())
        expect_shape(py::reinterpret_borrow<py::array>(g.denom), "denom", rs, " (the relevance's shape)");
    if (!g.z.is_none())
        expect_shape(py::reinterpret_borrow<py::array>(g.z), "z", rs, " (the relevance's shape)");
    return g;
}

void group_overlaps(const GroupArgs& g) {
    std::vector<std::pair<py::object, std::string>> inputs{
        {g.relevance, "relevance"}, {g.denom, "denom"}, {g.z, "z"}};
    for (size_t t = 0; t < g.xs.size(); ++t) {
        const std::string i = "[" + std::to_string(t) + "]";
        inputs.push_back({g.xs[t], "xs" + i});
        inputs.push_back({g.ws[t], "ws" + i});
        inputs.push_back({g.bs[t], "bs" + i});
    }
    expect_no_overlap(g.out, inputs);
}

template <class T>
std::vector<onnxdtd::Term<T>> terms_of(const GroupArgs& g) {
    std::vector<onnxdtd::Term<T>> terms;
    for (size_t t = 0; t < g.xs.size(); ++t) {
        onnxdtd::Term<T> term;
        term.x = static_cast<const T*>(g.xs[t].data());
        term.x_broadcast = g.broadcast[t];
        term.w = static_cast<const T*>(g.ws[t].data());
        term.b = ptr<T>(g.bs[t]);
        term.sign = g.signs[t];
        terms.push_back(term);
    }
    return terms;
}

template <class T>
void run_conv(GroupArgs& g, const onnxdtd::ConvShape& shape) {
    const auto terms = terms_of<T>(g);
    const T* r = static_cast<const T*>(g.relevance.data());
    const T* d = ptr<T>(g.denom);
    const T* z = ptr<T>(g.z);
    T* out = static_cast<T*>(g.out.mutable_data());
    py::gil_scoped_release release;
    onnxdtd::conv_group<T>(shape, terms, r, d, z, g.mask, g.coeff, g.stabilizer, out);
}

void conv_group(py::handle xs, py::handle ws, py::handle bs, py::handle signs, py::handle relevance,
                py::handle denom, py::handle z, py::handle mask, py::handle coeff, py::handle stabilizer,
                py::handle strides, py::handle dilations, py::handle pads, py::handle group, py::handle out) {
    Arrays arrays;
    GroupArgs g = group_args(arrays, xs, ws, bs, signs, relevance, denom, z, mask, coeff, stabilizer, out);
    const int sd = spatial_rank(g.relevance, "relevance", "(N, Cout, *O)");
    const Geometry geo = geometry(nullptr, strides, dilations, pads, sd);
    const Shape rs = shape_of(g.relevance), os = shape_of(g.out);
    const int64_t N = rs[0], Cout = rs[1];
    expect_rank(g.out, "out", sd + 2, "(N, C, *S) with the relevance's " + std::to_string(sd) + " spatial axes");
    if (os[0] != N)
        value_error("out: expected " + std::to_string(N) + " samples (the relevance's batch), got shape " +
                    shape_str(os));
    const int64_t C = os[1];
    const int64_t G = to_int(group, "group");
    if (G < 1) value_error("group: expected an int >= 1, got " + std::to_string(G));
    if (C % G != 0)
        value_error("group: " + std::to_string(G) + " does not divide the " + std::to_string(C) +
                    " input channels (out has shape " + shape_str(os) + ")");
    if (Cout % G != 0)
        value_error("group: " + std::to_string(G) + " does not divide the " + std::to_string(Cout) +
                    " output channels (relevance has shape " + shape_str(rs) + ")");
    const Shape in(os.begin() + 2, os.end()), osz(rs.begin() + 2, rs.end());
    Shape kernel;
    for (size_t t = 0; t < g.xs.size(); ++t) {
        const std::string i = "[" + std::to_string(t) + "]";
        const Shape xsh = shape_of(g.xs[t]);
        expect_rank(g.xs[t], "xs" + i, sd + 2, "(N, C, *S)");
        Shape want = os;
        if (xsh[0] == 1) want[0] = 1;
        expect_shape(g.xs[t], "xs" + i, want, " (out's shape, or with batch 1 to broadcast)");
        g.broadcast.push_back(xsh[0] == 1 && N != 1);
        expect_rank(g.ws[t], "ws" + i, sd + 2, "(Cout, C/group, *kernel)");
        const Shape wsh = shape_of(g.ws[t]);
        if (t == 0) {
            kernel.assign(wsh.begin() + 2, wsh.end());
            for (int64_t k : kernel)
                if (k < 1) value_error("ws[0]: expected a kernel of size >= 1, got shape " + shape_str(wsh));
        }
        Shape wwant{Cout, C / G};
        wwant.insert(wwant.end(), kernel.begin(), kernel.end());
        expect_shape(g.ws[t], "ws" + i, wwant, " (Cout, C/group, *kernel, with the kernel of ws[0])");
        if (!g.bs[t].is_none())
            expect_shape(py::reinterpret_borrow<py::array>(g.bs[t]), "bs" + i, {Cout}, " (Cout,)");
    }
    if (!g.xs.empty()) {
        const Shape expected_out = window_out(geo, in, kernel);
        if (expected_out != osz) {
            Shape want{N, Cout};
            want.insert(want.end(), expected_out.begin(), expected_out.end());
            value_error("relevance: expected shape " + shape_str(want) + " (the conv of input " + shape_str(in) +
                        " with " + geometry_str(geo, kernel) + "), got shape " + shape_str(rs));
        }
    }
    group_overlaps(g);
    if (g.xs.empty()) return;
    onnxdtd::ConvShape shape;
    shape.n = N;
    shape.c = C;
    shape.cout = Cout;
    shape.group = G;
    shape.win = make_window(geo, in, osz, kernel);
    if (arrays.dtype() == Dtype::f32)
        run_conv<float>(g, shape);
    else
        run_conv<double>(g, shape);
}

template <class T>
void run_dense(GroupArgs& g, const onnxdtd::DenseShape& shape) {
    const auto terms = terms_of<T>(g);
    const T* r = static_cast<const T*>(g.relevance.data());
    const T* d = ptr<T>(g.denom);
    const T* z = ptr<T>(g.z);
    T* out = static_cast<T*>(g.out.mutable_data());
    py::gil_scoped_release release;
    onnxdtd::dense_group<T>(shape, terms, r, d, z, g.mask, g.coeff, g.stabilizer, out);
}

void dense_group(py::handle xs, py::handle ws, py::handle bs, py::handle signs, py::handle relevance,
                 py::handle denom, py::handle z, py::handle mask, py::handle coeff, py::handle stabilizer,
                 py::handle out) {
    Arrays arrays;
    GroupArgs g = group_args(arrays, xs, ws, bs, signs, relevance, denom, z, mask, coeff, stabilizer, out);
    expect_rank(g.relevance, "relevance", 2, "(M, J)");
    expect_rank(g.out, "out", 2, "(M, K)");
    const Shape rs = shape_of(g.relevance), os = shape_of(g.out);
    const int64_t M = rs[0], J = rs[1], K = os[1];
    if (os[0] != M)
        value_error("out: expected " + std::to_string(M) + " rows (the relevance's), got shape " + shape_str(os));
    for (size_t t = 0; t < g.xs.size(); ++t) {
        const std::string i = "[" + std::to_string(t) + "]";
        expect_rank(g.xs[t], "xs" + i, 2, "(M, K)");
        const Shape xsh = shape_of(g.xs[t]);
        Shape want = os;
        if (xsh[0] == 1) want[0] = 1;
        expect_shape(g.xs[t], "xs" + i, want, " (out's shape, or with 1 row to broadcast)");
        g.broadcast.push_back(xsh[0] == 1 && M != 1);
        expect_rank(g.ws[t], "ws" + i, 2, "(J, K)");
        expect_shape(g.ws[t], "ws" + i, {J, K}, " (J, K): the relevance's J, out's K");
        if (!g.bs[t].is_none())
            expect_shape(py::reinterpret_borrow<py::array>(g.bs[t]), "bs" + i, {J}, " (J,)");
    }
    group_overlaps(g);
    if (g.xs.empty()) return;
    onnxdtd::DenseShape shape;
    shape.m = M;
    shape.k = K;
    shape.j = J;
    if (arrays.dtype() == Dtype::f32)
        run_dense<float>(g, shape);
    else
        run_dense<double>(g, shape);
}

// ---------------------------------------------------------------------------------------------
// Pooling and sums.

template <class T>
py::array empty(const Shape& shape) {
    return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

py::array empty_like(Dtype d, const Shape& shape) {
    return d == Dtype::f32 ? empty<float>(shape) : empty<double>(shape);
}

// a (N, C, *S) and relevance (N, C, *O) of a max pooling; returns the window.
onnxdtd::PoolShape maxpool_shape(Arrays& arrays, py::array& a, py::array& r, py::handle a_in, py::handle r_in,
                                 py::handle kernel, py::handle strides, py::handle dilations, py::handle pads) {
    a = arrays.get(a_in, "a");
    r = arrays.get(r_in, "relevance");
    const int sd = spatial_rank(a, "a", "(N, C, *S)");
    const Geometry geo = geometry(&kernel, strides, dilations, pads, sd);
    const Shape as = shape_of(a), rs = shape_of(r);
    const Shape in(as.begin() + 2, as.end());
    const Shape expected = window_out(geo, in, geo.kernel);
    expect_rank(r, "relevance", sd + 2, "(N, C, *O) with a's " + std::to_string(sd) + " spatial axes");
    Shape want{as[0], as[1]};
    want.insert(want.end(), expected.begin(), expected.end());
    if (rs != want)
        value_error("relevance: expected shape " + shape_str(want) + " (the pooling of a " + shape_str(as) +
                    " with " + geometry_str(geo, geo.kernel) + "), got shape " + shape_str(rs));
    onnxdtd::PoolShape shape;
    shape.n = as[0];
    shape.c = as[1];
    shape.win = make_window(geo, in, Shape(rs.begin() + 2, rs.end()), geo.kernel);
    return shape;
}

py::array maxpool_winner(py::handle a_in, py::handle r_in, py::handle kernel, py::handle strides,
                         py::handle dilations, py::handle pads) {
    Arrays arrays;
    py::array a, r;
    const auto shape = maxpool_shape(arrays, a, r, a_in, r_in, kernel, strides, dilations, pads);
    py::array out = empty_like(arrays.dtype(), shape_of(a));
    auto run = [&](auto zero) {
        using T = decltype(zero);
        const T* ap = static_cast<const T*>(a.data());
        const T* rp = static_cast<const T*>(r.data());
        T* op = static_cast<T*>(out.mutable_data());
        py::gil_scoped_release release;
        onnxdtd::maxpool_winner<T>(shape, ap, rp, op);
    };
    arrays.dtype() == Dtype::f32 ? run(0.0f) : run(0.0);
    return out;
}

py::array maxpool_proportional(py::handle a_in, py::handle r_in, py::handle kernel, py::handle strides,
                               py::handle dilations, py::handle pads, py::handle stabilizer) {
    Arrays arrays;
    py::array a, r;
    const auto shape = maxpool_shape(arrays, a, r, a_in, r_in, kernel, strides, dilations, pads);
    const double eps = to_double(stabilizer, "stabilizer");
    py::array out = empty_like(arrays.dtype(), shape_of(a));
    auto run = [&](auto zero) {
        using T = decltype(zero);
        const T* ap = static_cast<const T*>(a.data());
        const T* rp = static_cast<const T*>(r.data());
        T* op = static_cast<T*>(out.mutable_data());
        py::gil_scoped_release release;
        onnxdtd::maxpool_proportional<T>(shape, ap, rp, eps, op);
    };
    arrays.dtype() == Dtype::f32 ? run(0.0f) : run(0.0);
    return out;
}

py::array sumpool(py::handle x_in, py::handle kernel, py::handle strides, py::handle dilations, py::handle pads) {
    Arrays arrays;
    py::array x = arrays.get(x_in, "x");
    const int sd = spatial_rank(x, "x", "(N, C, *S)");
    const Geometry geo = geometry(&kernel, strides, dilations, pads, sd);
    const Shape xs = shape_of(x), in(xs.begin() + 2, xs.end());
    const Shape osz = window_out(geo, in, geo.kernel);
    Shape oshape{xs[0], xs[1]};
    oshape.insert(oshape.end(), osz.begin(), osz.end());
    onnxdtd::PoolShape shape;
    shape.n = xs[0];
    shape.c = xs[1];
    shape.win = make_window(geo, in, osz, geo.kernel);
    py::array out = empty_like(arrays.dtype(), oshape);
    auto run = [&](auto zero) {
        using T = decltype(zero);
        const T* xp = static_cast<const T*>(x.data());
        T* op = static_cast<T*>(out.mutable_data());
        py::gil_scoped_release release;
        onnxdtd::sumpool<T>(shape, xp, op);
    };
    arrays.dtype() == Dtype::f32 ? run(0.0f) : run(0.0);
    return out;
}

py::array unpool(py::handle s_in, py::handle kernel, py::handle strides, py::handle dilations, py::handle pads,
                 py::handle in_size) {
    Arrays arrays;
    py::array s = arrays.get(s_in, "s");
    const int sd = spatial_rank(s, "s", "(N, C, *O)");
    const Geometry geo = geometry(&kernel, strides, dilations, pads, sd);
    const Shape in = ints(in_size, "in_size", sd, 0, "one per spatial axis of s");
    const Shape ss = shape_of(s), osz(ss.begin() + 2, ss.end());
    const Shape expected = window_out(geo, in, geo.kernel);
    if (osz != expected) {
        Shape want{ss[0], ss[1]};
        want.insert(want.end(), expected.begin(), expected.end());
        value_error("s: expected shape " + shape_str(want) + " (the pooling of in_size " + shape_str(in) +
                    " with " + geometry_str(geo, geo.kernel) + "), got shape " + shape_str(ss));
    }
    Shape oshape{ss[0], ss[1]};
    oshape.insert(oshape.end(), in.begin(), in.end());
    onnxdtd::PoolShape shape;
    shape.n = ss[0];
    shape.c = ss[1];
    shape.win = make_window(geo, in, osz, geo.kernel);
    py::array out = empty_like(arrays.dtype(), oshape);
    auto run = [&](auto zero) {
        using T = decltype(zero);
        const T* sp = static_cast<const T*>(s.data());
        T* op = static_cast<T*>(out.mutable_data());
        py::gil_scoped_release release;
        onnxdtd::unpool<T>(shape, sp, op);
    };
    arrays.dtype() == Dtype::f32 ? run(0.0f) : run(0.0);
    return out;
}

py::list add_split(py::handle inputs_in, py::handle r_in, py::handle stabilizer) {
    Arrays arrays;
    const auto il = items(inputs_in, "inputs", "arrays");
    if (il.empty()) value_error("inputs: expected at least one array, got an empty list");
    std::vector<py::array> inputs;
    for (size_t k = 0; k < il.size(); ++k) inputs.push_back(arrays.get(il[k], "inputs[" + std::to_string(k) + "]"));
    py::array r = arrays.get(r_in, "relevance");
    const Shape rs = shape_of(r);
    for (size_t k = 0; k < inputs.size(); ++k)
        expect_shape(inputs[k], "inputs[" + std::to_string(k) + "]", rs, " (the relevance's shape)");
    const double eps = to_double(stabilizer, "stabilizer");
    std::vector<py::array> outs;
    for (size_t k = 0; k < inputs.size(); ++k) outs.push_back(empty_like(arrays.dtype(), rs));
    auto run = [&](auto zero) {
        using T = decltype(zero);
        std::vector<const T*> ip;
        std::vector<T*> op;
        for (auto& a : inputs) ip.push_back(static_cast<const T*>(a.data()));
        for (auto& a : outs) op.push_back(static_cast<T*>(a.mutable_data()));
        const T* rp = static_cast<const T*>(r.data());
        const int64_t size = static_cast<int64_t>(r.size());
        py::gil_scoped_release release;
        onnxdtd::add_split<T>(size, ip, rp, eps, op);
    };
    arrays.dtype() == Dtype::f32 ? run(0.0f) : run(0.0);
    py::list result;
    for (auto& a : outs) result.append(a);
    return result;
}

}  // namespace

PYBIND11_MODULE(_core, m, py::mod_gil_not_used()) {
    m.doc() = "onnxdtd's C++ kernels (docs/kernels.md): rule passes through conv and dense layers, "
              "max pooling, window sums and the proportional split of an Add. float32 and float64.";

    m.def("conv_group", &conv_group, py::arg("xs"), py::arg("ws"), py::arg("bs"), py::arg("signs"),
          py::arg("relevance"), py::arg("denom"), py::arg("z"), py::arg("mask"), py::arg("coeff"),
          py::arg("stabilizer"), py::arg("strides"), py::arg("dilations"), py::arg("pads"), py::arg("group"),
          py::arg("out"),
          "One rule group through a grouped convolution (spatial rank 1 or 2), accumulated into out:\n"
          "S = relevance / stab(D) (masked by the sign of z when mask is +1/-1), where D = denom or\n"
          "sum_t signs[t] * (conv(xs[t], ws[t]) + bs[t]); out += coeff * sum_t signs[t] * xs[t] * conv^T(S, ws[t]).\n"
          "xs[t]: (N or 1, C, *S); ws[t]: (Cout, C/group, *kernel); bs[t]: (Cout,) or None;\n"
          "relevance, denom, z: (N, Cout, *O); out: (N, C, *S); pads: all begins, then all ends.");
    m.def("dense_group", &dense_group, py::arg("xs"), py::arg("ws"), py::arg("bs"), py::arg("signs"),
          py::arg("relevance"), py::arg("denom"), py::arg("z"), py::arg("mask"), py::arg("coeff"),
          py::arg("stabilizer"), py::arg("out"),
          "One rule group through a dense layer y = x @ w.T + b, accumulated into out.\n"
          "xs[t]: (M or 1, K); ws[t]: (J, K); bs[t]: (J,) or None; relevance, denom, z: (M, J); out: (M, K).");
    m.def("maxpool_winner", &maxpool_winner, py::arg("a"), py::arg("relevance"), py::arg("kernel"),
          py::arg("strides"), py::arg("dilations"), py::arg("pads"),
          "Each output's relevance to the first maximum of its window (padding never wins); shape of a.");
    m.def("maxpool_proportional", &maxpool_proportional, py::arg("a"), py::arg("relevance"), py::arg("kernel"),
          py::arg("strides"), py::arg("dilations"), py::arg("pads"), py::arg("stabilizer"),
          "a * unpool(relevance / stab(sumpool(a))); shape of a.");
    m.def("sumpool", &sumpool, py::arg("x"), py::arg("kernel"), py::arg("strides"), py::arg("dilations"),
          py::arg("pads"), "Window sums with zero padding: (N, C, *S) -> (N, C, *O).");
    m.def("unpool", &unpool, py::arg("s"), py::arg("kernel"), py::arg("strides"), py::arg("dilations"),
          py::arg("pads"), py::arg("in_size"),
          "The transpose of sumpool: (N, C, *O) -> (N, C, *in_size).");
    m.def("add_split", &add_split, py::arg("inputs"), py::arg("relevance"), py::arg("stabilizer"),
          "R_k = inputs[k] * relevance / stab(sum_k inputs[k]) for inputs of the relevance's shape.");
    m.def("build_info", [] {
        py::dict d;
        d["openmp"] = onnxdtd::has_openmp();
        d["max_threads"] = onnxdtd::max_threads();
        d["blas"] = onnxdtd::blas_name();
        d["blas_threads"] = onnxdtd::blas_threads();
        return d;
    }, "How the extension was built: OpenMP (and its thread count), the BLAS and its thread count.");

    // The extension links its own OpenBLAS (the scipy-openblas32 wheel's, not numpy's): with OpenMP,
    // run it single-threaded and let the kernels split the GEMMs over the OpenMP threads, so that
    // one thread pool does all the work (OpenBLAS's idle threads would spin against OpenMP's).
    if (onnxdtd::has_openmp() && std::string(onnxdtd::blas_name()).rfind("scipy-openblas", 0) == 0)
        onnxdtd::set_blas_threads(1);
}
