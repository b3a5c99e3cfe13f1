// Runs an explainer exported by `onnxdtd export` (or onnxdtd.export) through onnxruntime's C++ API:
// no Python, no onnxdtd. Reads one raw float32 sample (little-endian, the model input's shape without
// the batch axis), explains TARGET (default -1: the predicted class), writes the relevance as raw
// float32 to OUT and prints the explained class, its logit and the sum of the relevance.
//
//   explain_exported EXPLAINER.onnx INPUT.f32 OUT.f32 [TARGET]
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <numeric>
#include <string>
#include <vector>

#include <onnxruntime_cxx_api.h>

namespace {

std::vector<float> read_floats(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw std::runtime_error("cannot read " + path);
    const std::streamsize bytes = in.tellg();
    if (bytes % static_cast<std::streamsize>(sizeof(float)) != 0)
        throw std::runtime_error(path + ": size is not a multiple of 4 bytes");
    std::vector<float> values(static_cast<size_t>(bytes) / sizeof(float));
    in.seekg(0);
    in.read(reinterpret_cast<char*>(values.data()), bytes);
    return values;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        std::cerr << "usage: " << argv[0] << " EXPLAINER.onnx INPUT.f32 OUT.f32 [TARGET]\n";
        return 2;
    }
    try {
        Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "onnxdtd");
        Ort::SessionOptions options;
        Ort::Session session(env, argv[1], options);

        // The input's shape from the graph: batch 1, the rest as declared.
        std::vector<int64_t> shape = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
        shape[0] = 1;
        const int64_t size = std::accumulate(shape.begin() + 1, shape.end(), int64_t(1), std::multiplies<>());
        std::vector<float> x = read_floats(argv[2]);
        if (static_cast<int64_t>(x.size()) != size) {
            std::cerr << "the input holds " << x.size() << " floats, the model takes " << size << "\n";
            return 2;
        }
        std::vector<int64_t> target{argc > 4 ? std::atoll(argv[4]) : -1};
        const int64_t target_shape[] = {1};

        Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        Ort::Value inputs[] = {
            Ort::Value::CreateTensor<float>(memory, x.data(), x.size(), shape.data(), shape.size()),
            Ort::Value::CreateTensor<int64_t>(memory, target.data(), target.size(), target_shape, 1)};
        const char* input_names[] = {"input", "target"};
        const char* output_names[] = {"output", "explained", "relevance"};
        std::vector<Ort::Value> outputs =
            session.Run(Ort::RunOptions{nullptr}, input_names, inputs, 2, output_names, 3);

        const int64_t explained = outputs[1].GetTensorData<int64_t>()[0];
        const float logit = outputs[0].GetTensorData<float>()[explained];
        const float* relevance = outputs[2].GetTensorData<float>();
        std::ofstream(argv[3], std::ios::binary)
            .write(reinterpret_cast<const char*>(relevance), static_cast<std::streamsize>(size * sizeof(float)));
        std::cout << "class " << explained << " logit " << logit << " relevance sum "
                  << std::accumulate(relevance, relevance + size, 0.0) << "\n";
        return 0;
    } catch (const std::exception& e) {  // Ort::Exception derives from std::exception
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
