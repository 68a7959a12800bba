// Raw pixels -> normalised CHW float32, the same arithmetic as medfm_compress/runtime/preprocess.py.
//
// Python works in float32 throughout (numpy weak-scalar promotion keeps python floats from widening), so each
// step below is written with float operands in the same order to give bit-identical results for images that
// need no resize.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "medfm/runtime.hpp"

namespace medfm {

namespace {

// One output pixel of a separable resampling pass: `count` taps starting at input index `first`.
struct Taps {
  int64_t first = 0;
  int64_t count = 0;
  std::vector<float> weights;
};

// Antialiased bilinear (triangle) filter weights, as torch's CPU upsample_bilinear2d_aa computes them with
// align_corners=False: the filter support widens by the scale when downsampling, so every input pixel
// contributes; when upsampling it is plain bilinear interpolation.
std::vector<Taps> aa_bilinear_taps(int64_t in_size, int64_t out_size) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  const float support = scale >= 1.0f ? scale : 1.0f;
  const float invscale = scale >= 1.0f ? 1.0f / scale : 1.0f;
  std::vector<Taps> taps(static_cast<size_t>(out_size));
  for (int64_t i = 0; i < out_size; ++i) {
    const float center = static_cast<float>(scale * (static_cast<double>(i) + 0.5));
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5f), 0);
    const int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5f), in_size);
    Taps& t = taps[static_cast<size_t>(i)];
    t.first = xmin;
    t.count = std::max<int64_t>(xmax - xmin, 0);
    t.weights.resize(static_cast<size_t>(t.count));
    float total = 0.0f;
    for (int64_t j = 0; j < t.count; ++j) {
      const float x = std::fabs((static_cast<float>(j + xmin) - center + 0.5f) * invscale);
      const float w = x < 1.0f ? 1.0f - x : 0.0f;
      t.weights[static_cast<size_t>(j)] = w;
      total += w;
    }
    if (total != 0.0f) {
      for (float& w : t.weights) w /= total;
    }
  }
  return taps;
}

// Resamples one plane (rows x cols) along rows (horizontal) or columns (vertical).
std::vector<float> resample_rows(const std::vector<float>& src, int64_t rows, int64_t in_cols, int64_t out_cols) {
  const auto taps = aa_bilinear_taps(in_cols, out_cols);
  std::vector<float> dst(static_cast<size_t>(rows * out_cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* line = src.data() + r * in_cols;
    for (int64_t c = 0; c < out_cols; ++c) {
      const Taps& t = taps[static_cast<size_t>(c)];
      float acc = 0.0f;
      for (int64_t j = 0; j < t.count; ++j) acc += line[t.first + j] * t.weights[static_cast<size_t>(j)];
      dst[static_cast<size_t>(r * out_cols + c)] = acc;
    }
  }
  return dst;
}

std::vector<float> resample_cols(const std::vector<float>& src, int64_t in_rows, int64_t cols, int64_t out_rows) {
  const auto taps = aa_bilinear_taps(in_rows, out_rows);
  std::vector<float> dst(static_cast<size_t>(out_rows * cols));
  for (int64_t r = 0; r < out_rows; ++r) {
    const Taps& t = taps[static_cast<size_t>(r)];
    for (int64_t c = 0; c < cols; ++c) {
      float acc = 0.0f;
      for (int64_t j = 0; j < t.count; ++j) {
        acc += src[static_cast<size_t>((t.first + j) * cols + c)] * t.weights[static_cast<size_t>(j)];
      }
      dst[static_cast<size_t>(r * cols + c)] = acc;
    }
  }
  return dst;
}

template <typename T>
float pixel(const ImageView& image, size_t index) {
  return static_cast<float>(static_cast<const T*>(image.data)[index]);
}

float raw_value(const ImageView& image, size_t index) {
  switch (image.type) {
    case PixelType::U8: return pixel<uint8_t>(image, index);
    case PixelType::U16: return pixel<uint16_t>(image, index);
    case PixelType::F32: return pixel<float>(image, index);
  }
  return 0.0f;
}

}  // namespace

const char* pixel_type_name(PixelType type) {
  switch (type) {
    case PixelType::U8: return "uint8";
    case PixelType::U16: return "uint16";
    case PixelType::F32: return "float32";
  }
  return "unknown";
}

void preprocess_image(const ImageView& image, const PreprocessSpec& spec, float* out) {
  if (image.data == nullptr || image.height <= 0 || image.width <= 0) {
    throw Error("empty image (no pixels); check that the file was read correctly");
  }
  if (image.channels != 1 && image.channels != 3) {
    throw Error("images must have 1 or 3 channels, got " + std::to_string(image.channels));
  }
  if (image.channels != spec.channels && !(image.channels == 1 && spec.channels == 3)) {
    throw Error("image has " + std::to_string(image.channels) + " channel(s) but the model expects " +
                std::to_string(spec.channels) + "; convert the image or the model");
  }
  const int64_t h = image.height, w = image.width, c = image.channels;
  const size_t plane = static_cast<size_t>(h * w);

  // 1. raw -> [0, 1], kept as planar CHW (de-interleaving HWC).
  std::vector<float> unit(plane * static_cast<size_t>(c));
  if (spec.window) {
    const float lo = static_cast<float>(spec.window->first);
    const float hi = static_cast<float>(spec.window->second);
    const float range = static_cast<float>(spec.window->second - spec.window->first);
    for (size_t p = 0; p < plane; ++p) {
      for (int64_t k = 0; k < c; ++k) {
        const float v = raw_value(image, p * static_cast<size_t>(c) + static_cast<size_t>(k));
        if (!std::isfinite(v)) throw Error("image contains NaN or Inf values; clean the data or drop the image");
        unit[static_cast<size_t>(k) * plane + p] = (std::min(std::max(v, lo), hi) - lo) / range;
      }
    }
  } else if (image.type == PixelType::F32) {
    float vmin = INFINITY, vmax = -INFINITY;
    for (size_t p = 0; p < plane; ++p) {
      for (int64_t k = 0; k < c; ++k) {
        const float v = raw_value(image, p * static_cast<size_t>(c) + static_cast<size_t>(k));
        if (!std::isfinite(v)) throw Error("image contains NaN or Inf values; clean the data or drop the image");
        vmin = std::min(vmin, v);
        vmax = std::max(vmax, v);
        unit[static_cast<size_t>(k) * plane + p] = std::min(std::max(v, 0.0f), 1.0f);
      }
    }
    if (static_cast<double>(vmin) < -1e-3 || static_cast<double>(vmax) > 1.0 + 1e-3) {
      throw Error("float images must lie in [0, 1] (found [" + std::to_string(vmin) + ", " + std::to_string(vmax) +
                  "]); rescale them or export the model with an intensity window");
    }
  } else {
    const float scale = image.type == PixelType::U8 ? 255.0f : 65535.0f;
    for (size_t p = 0; p < plane; ++p) {
      for (int64_t k = 0; k < c; ++k) {
        unit[static_cast<size_t>(k) * plane + p] =
            raw_value(image, p * static_cast<size_t>(c) + static_cast<size_t>(k)) / scale;
      }
    }
  }

  // 2. resize each plane (width first, then height, as torch does) when the size differs.
  const int64_t oh = spec.height, ow = spec.width;
  const size_t out_plane = static_cast<size_t>(oh * ow);
  std::vector<std::vector<float>> planes(static_cast<size_t>(c));
  for (int64_t k = 0; k < c; ++k) {
    std::vector<float> p(unit.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(k) * plane),
                         unit.begin() + static_cast<std::ptrdiff_t>(static_cast<size_t>(k + 1) * plane));
    if (ow != w) p = resample_rows(p, h, w, ow);
    if (oh != h) p = resample_cols(p, h, ow, oh);
    planes[static_cast<size_t>(k)] = std::move(p);
  }

  // 3. channel repeat (1 -> 3) and (x - mean) / std.
  for (int k = 0; k < spec.channels; ++k) {
    const std::vector<float>& src = planes[c == 1 ? 0 : static_cast<size_t>(k)];
    const float mean = spec.mean[static_cast<size_t>(k)];
    const float sd = spec.std[static_cast<size_t>(k)];
    float* dst = out + static_cast<size_t>(k) * out_plane;
    for (size_t p = 0; p < out_plane; ++p) dst[p] = (src[p] - mean) / sd;
  }
}

std::vector<float> preprocess_batch(const std::vector<ImageView>& images, const PreprocessSpec& spec) {
  if (images.empty()) throw Error("no images to preprocess (empty batch)");
  const size_t per_image = static_cast<size_t>(spec.channels) * static_cast<size_t>(spec.height) *
                           static_cast<size_t>(spec.width);
  std::vector<float> batch(per_image * images.size());
  for (size_t i = 0; i < images.size(); ++i) {
    try {
      preprocess_image(images[i], spec, batch.data() + i * per_image);
    } catch (const Error& e) {
      if (images.size() == 1) throw;
      throw Error("image " + std::to_string(i) + " of the batch: " + e.what());
    }
  }
  return batch;
}

std::vector<float> probabilities(const std::vector<float>& logits, int64_t num_classes, Task task) {
  if (num_classes <= 0 || logits.size() % static_cast<size_t>(num_classes) != 0) {
    throw Error("logits do not form rows of " + std::to_string(num_classes) + " classes");
  }
  if (task == Task::Regression) return logits;  // the values, in the targets' units
  std::vector<float> probs(logits.size());
  const size_t k = static_cast<size_t>(num_classes);
  for (size_t row = 0; row < logits.size() / k; ++row) {
    const float* z = logits.data() + row * k;
    float* p = probs.data() + row * k;
    if (task == Task::Multilabel) {
      for (size_t j = 0; j < k; ++j) p[j] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(z[j]))));
      continue;
    }
    double zmax = z[0];
    for (size_t j = 1; j < k; ++j) zmax = std::max(zmax, static_cast<double>(z[j]));
    double total = 0.0;
    std::vector<double> e(k);
    for (size_t j = 0; j < k; ++j) total += (e[j] = std::exp(static_cast<double>(z[j]) - zmax));
    for (size_t j = 0; j < k; ++j) p[j] = static_cast<float>(e[j] / total);
  }
  return probs;
}

}  // namespace medfm
