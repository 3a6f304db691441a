// image.h: read the example app's input and preprocess it as torchvision does.
//
// Two input kinds, no image library needed:
//   - PPM images (P6 binary or P3 ASCII, 8-bit): `convert photo.jpg photo.ppm`
//     or PIL's `Image.open(p).convert("RGB").save("photo.ppm")` writes one;
//   - raw float32 tensors (.bin): already preprocessed, NCHW, little-endian,
//     the model's input size (numpy: `x.astype("float32").tofile(p)`).
#ifndef TVM_SHUFFLE_EXAMPLE_IMAGE_H_
#define TVM_SHUFFLE_EXAMPLE_IMAGE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace image {

struct Rgb {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height x width x 3, row-major
};

namespace detail {

// A PPM header token; '#' starts a comment that runs to the end of the line.
inline int read_header_int(std::istream& in, const std::string& path) {
  int value = 0;
  while (in >> std::ws && in.peek() == '#') in.ignore(1 << 20, '\n');
  if (!(in >> value) || value <= 0) throw std::runtime_error(path + ": malformed PPM header");
  return value;
}

}  // namespace detail

/*! \brief Read an 8-bit PPM (P6 or P3). */
inline Rgb read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string magic;
  in >> magic;
  if (magic != "P6" && magic != "P3") {
    throw std::runtime_error(path + " is not a PPM image (P6 or P3); convert it, e.g. `convert in.jpg out.ppm`");
  }
  Rgb img;
  img.width = detail::read_header_int(in, path);
  img.height = detail::read_header_int(in, path);
  int maxval = detail::read_header_int(in, path);
  if (maxval > 255) throw std::runtime_error(path + ": 16-bit PPM is not supported");
  img.pixels.resize(size_t(img.width) * img.height * 3);
  if (magic == "P6") {
    in.get();  // the single whitespace byte that ends the header
    in.read(reinterpret_cast<char*>(img.pixels.data()), std::streamsize(img.pixels.size()));
    if (size_t(in.gcount()) != img.pixels.size()) throw std::runtime_error(path + ": truncated PPM data");
  } else {
    for (uint8_t& p : img.pixels) {
      int v = 0;
      if (!(in >> v)) throw std::runtime_error(path + ": truncated PPM data");
      p = uint8_t(v);
    }
  }
  if (maxval != 255) {
    for (uint8_t& p : img.pixels) p = uint8_t(std::lround(p * 255.0 / maxval));
  }
  return img;
}

/*! \brief A raw float32 tensor file (its size is checked by tvm_shuffle::Model::run). */
inline std::vector<float> read_tensor(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error("cannot open " + path);
  size_t bytes = size_t(in.tellg());
  if (bytes % sizeof(float) != 0) throw std::runtime_error(path + " is not a raw float32 tensor");
  std::vector<float> data(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), std::streamsize(bytes));
  return data;
}

/*!
 * \brief torchvision's ImageNet preprocessing, as NCHW floats of 3 x crop_h x crop_w:
 * Resize(round(crop * 256 / 224)), CenterCrop(crop_h, crop_w), ToTensor, Normalize(mean, std).
 *
 * For a square crop (224x224: Resize(256), CenterCrop(224)) the resize is
 * torchvision's: the shorter side becomes the size, the longer one keeps the
 * aspect ratio (truncated). For a non-square crop, the side that binds the
 * crop is the one resized, so the crop always fits.
 *
 * The resize is bilinear with half-pixel centers and no antialiasing, i.e.
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False) and
 * torchvision's Resize(..., antialias=False); torchvision's default antialias
 * differs slightly when shrinking a large photo.
 */
inline std::vector<float> preprocess(const Rgb& img, int crop_h, int crop_w) {
  static const float kMean[3] = {0.485f, 0.456f, 0.406f};
  static const float kStd[3] = {0.229f, 0.224f, 0.225f};
  int rh, rw;
  if (int64_t(crop_h) * img.width >= int64_t(crop_w) * img.height) {  // crop_h / height >= crop_w / width
    rh = int(std::lround(crop_h * 256.0 / 224.0));
    rw = int(int64_t(rh) * img.width / img.height);
  } else {
    rw = int(std::lround(crop_w * 256.0 / 224.0));
    rh = int(int64_t(rw) * img.height / img.width);
  }
  if (rh < crop_h || rw < crop_w) throw std::runtime_error("image too small to crop");
  // Python's round(): ties to even, which std::nearbyint does in the default rounding mode.
  const int top = int(std::nearbyint((rh - crop_h) / 2.0));
  const int left = int(std::nearbyint((rw - crop_w) / 2.0));
  const float scale_y = float(img.height) / float(rh), scale_x = float(img.width) / float(rw);

  // Source index and weight along one axis, as PyTorch's upsample_bilinear2d computes them.
  struct Tap {
    int i0, i1;
    float w1;
  };
  auto tap = [](int dst, float scale, int in_size) {
    float src = std::max(scale * (float(dst) + 0.5f) - 0.5f, 0.0f);
    int i0 = std::min(int(src), in_size - 1);
    return Tap{i0, std::min(i0 + 1, in_size - 1), src - float(i0)};
  };

  std::vector<float> out(size_t(3) * crop_h * crop_w);
  for (int y = 0; y < crop_h; ++y) {
    Tap ty = tap(top + y, scale_y, img.height);
    for (int x = 0; x < crop_w; ++x) {
      Tap tx = tap(left + x, scale_x, img.width);
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int yy, int xx) { return float(img.pixels[(size_t(yy) * img.width + xx) * 3 + c]) / 255.0f; };
        float v = (1 - ty.w1) * ((1 - tx.w1) * at(ty.i0, tx.i0) + tx.w1 * at(ty.i0, tx.i1)) +
                  ty.w1 * ((1 - tx.w1) * at(ty.i1, tx.i0) + tx.w1 * at(ty.i1, tx.i1));
        out[(size_t(c) * crop_h + y) * crop_w + x] = (v - kMean[c]) / kStd[c];
      }
    }
  }
  return out;
}

}  // namespace image

#endif  // TVM_SHUFFLE_EXAMPLE_IMAGE_H_
