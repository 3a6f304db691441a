// classify: the tvm_shuffle bundle example app.
//
//   classify BUNDLE_DIR INPUT [--repeat N] [--dump FILE]
//
// Loads the bundle (the --out directory of tvm_shuffle.compile or tune), reads
// INPUT (a .ppm image, preprocessed as torchvision does, or a raw float32
// .bin tensor), runs the model and prints the top-5 class indices and the
// latency. --dump writes the first output's floats (raw float32) to FILE.
#include <tvm_shuffle.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "image.h"

namespace {

constexpr int kWarmup = 3;

int usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s BUNDLE_DIR INPUT [--repeat N] [--dump FILE]\n"
               "  BUNDLE_DIR  the --out directory of `python -m tvm_shuffle.compile` (or tune)\n"
               "  INPUT       an 8-bit PPM image (resized, center-cropped and normalized as torchvision does)\n"
               "              or a .bin file: a raw float32 NCHW tensor of the model's input size\n"
               "  --repeat N  timed runs after %d warm-up runs (default 20)\n"
               "  --dump FILE write the first output as raw float32 to FILE\n",
               argv0, kWarmup);
  return 2;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<float> load_input(const std::string& path, const tvm_shuffle::Model& model) {
  if (ends_with(path, ".bin")) return image::read_tensor(path);
  const std::vector<int64_t>& shape = model.input_shape();  // N, C, H, W
  if (shape.size() != 4 || shape[0] != 1 || shape[1] != 3) {
    throw std::runtime_error("images need a 1x3xHxW model input; pass a .bin tensor instead");
  }
  return image::preprocess(image::read_ppm(path), int(shape[2]), int(shape[3]));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage(argv[0]);
  std::string bundle = argv[1], input_path = argv[2], dump_path;
  int repeat = 20;
  for (int i = 3; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--dump" && i + 1 < argc) {
      dump_path = argv[++i];
    } else {
      return usage(argv[0]);
    }
  }

  try {
    tvm_shuffle::Model model(bundle);
    const tvm_shuffle::Manifest& m = model.manifest();
    std::printf("model %s, target %s (%s, %s), input %s %s\n", m.model.c_str(), m.target_name.c_str(),
                m.arch.c_str(), model.device_type() == kDLCUDA ? "cuda:0" : "cpu", m.input_name.c_str(),
                tvm_shuffle::shape_string(m.input_shape).c_str());
    std::vector<float> input = load_input(input_path, model);

    std::vector<tvm_shuffle::Output> outputs;
    for (int i = 0; i < kWarmup; ++i) outputs = model.run(input);
    std::vector<double> ms;
    for (int i = 0; i < repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      outputs = model.run(input);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());

    const std::vector<float>& scores = outputs.at(0).data;
    std::vector<size_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    size_t k = std::min<size_t>(5, order.size());
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](size_t a, size_t b) { return scores[a] > scores[b]; });
    std::printf("top-5 classes:");
    for (size_t i = 0; i < k; ++i) std::printf(" %zu", order[i]);
    std::printf("\ntop-5 scores: ");
    for (size_t i = 0; i < k; ++i) std::printf(" %.4f", scores[order[i]]);
    std::printf("\nlatency: median %.3f ms, min %.3f ms over %d runs, %d threads\n", ms[ms.size() / 2], ms.front(), repeat,
                model.threads());

    if (!dump_path.empty()) {
      FILE* f = std::fopen(dump_path.c_str(), "wb");
      if (f == nullptr || std::fwrite(scores.data(), sizeof(float), scores.size(), f) != scores.size()) {
        throw std::runtime_error("cannot write " + dump_path);
      }
      std::fclose(f);
    }
  } catch (const std::exception& err) {  // tvm_shuffle::Error and the image reader's errors
    std::fprintf(stderr, "error: %s\n", err.what());
    return 1;
  }
  return 0;
}
