// Segmentation outputs: per-pixel argmax of class maps, nearest-neighbour resizing of label maps (the same source
// pixel as Python's runtime.images.resize_mask), and label-map files (PGM / .npy) written atomically.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "files.hpp"
#include "medfm/runtime.hpp"

namespace medfm {

std::vector<uint16_t> argmax_maps(const float* logits, int64_t batch, int64_t classes, int64_t height, int64_t width) {
  if (logits == nullptr || batch <= 0 || classes <= 0 || height <= 0 || width <= 0) {
    throw Error("argmax_maps needs a non-empty [batch, classes, height, width] buffer");
  }
  if (classes > 65536) throw Error("a label map holds at most 65536 classes, got " + std::to_string(classes));
  const int64_t plane = height * width;
  std::vector<uint16_t> out(static_cast<size_t>(batch * plane));
  for (int64_t i = 0; i < batch; ++i) {
    const float* maps = logits + i * classes * plane;
    uint16_t* dst = out.data() + i * plane;
    std::vector<float> best(maps, maps + plane);  // class 0's scores; a later class wins only when strictly larger
    for (int64_t k = 1; k < classes; ++k) {
      const float* m = maps + k * plane;
      for (int64_t p = 0; p < plane; ++p) {
        if (m[p] > best[static_cast<size_t>(p)]) {
          best[static_cast<size_t>(p)] = m[p];
          dst[p] = static_cast<uint16_t>(k);
        }
      }
    }
  }
  return out;
}

namespace {

// Source index per output index: floor((i + 0.5) * in / out) in double, clamped to in - 1 (numpy's arithmetic).
std::vector<int64_t> nearest_index(int64_t in, int64_t out) {
  std::vector<int64_t> idx(static_cast<size_t>(out));
  for (int64_t i = 0; i < out; ++i) {
    const double src = (static_cast<double>(i) + 0.5) * static_cast<double>(in) / static_cast<double>(out);
    idx[static_cast<size_t>(i)] = std::min(static_cast<int64_t>(src), in - 1);
  }
  return idx;
}

}  // namespace

std::vector<uint16_t> resize_mask(const uint16_t* mask, int64_t height, int64_t width, int64_t out_height,
                                  int64_t out_width) {
  if (mask == nullptr || height <= 0 || width <= 0 || out_height <= 0 || out_width <= 0) {
    throw Error("resize_mask needs a non-empty label map and output size");
  }
  const auto rows = nearest_index(height, out_height);
  const auto cols = nearest_index(width, out_width);
  std::vector<uint16_t> out(static_cast<size_t>(out_height * out_width));
  for (int64_t r = 0; r < out_height; ++r) {
    const uint16_t* src = mask + rows[static_cast<size_t>(r)] * width;
    uint16_t* dst = out.data() + r * out_width;
    for (int64_t c = 0; c < out_width; ++c) dst[c] = src[cols[static_cast<size_t>(c)]];
  }
  return out;
}

void write_mask(const std::string& path, const uint16_t* mask, int64_t height, int64_t width) {
  if (mask == nullptr || height <= 0 || width <= 0) throw Error("cannot write mask " + path + ": it is empty");
  const size_t n = static_cast<size_t>(height * width);
  bool wide = false;
  for (size_t i = 0; i < n && !wide; ++i) wide = mask[i] > 255;
  const std::string ext = detail::lower_extension(path);
  std::string bytes;
  if (ext == "pgm") {
    bytes = "P5\n" + std::to_string(width) + " " + std::to_string(height) + "\n" + (wide ? "65535" : "255") + "\n";
    for (size_t i = 0; i < n; ++i) {
      if (wide) bytes.push_back(static_cast<char>(mask[i] >> 8));  // 16-bit PGM is big-endian
      bytes.push_back(static_cast<char>(mask[i] & 0xff));
    }
  } else if (ext == "npy") {
    bytes = detail::npy_header(wide ? "<u2" : "|u1", {height, width});
    for (size_t i = 0; i < n; ++i) {
      bytes.push_back(static_cast<char>(mask[i] & 0xff));
      if (wide) bytes.push_back(static_cast<char>(mask[i] >> 8));  // little-endian
    }
  } else {
    throw Error("cannot write mask " + path + ": use a .pgm or .npy file name");
  }
  detail::write_file_atomic(path, bytes, "mask");
}

}  // namespace medfm
