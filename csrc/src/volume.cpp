// Volumes: reading (NIfTI through nifti.cpp, .npy here), resampling between voxel grids, and sliding-window
// segmentation with Gaussian blending -- the same schedule and float32 arithmetic, step for step, as Python's
// runtime.volumes, runtime.preprocess and runtime.sliding_window, so that both write the same masks.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "files.hpp"
#include "medfm/runtime.hpp"

namespace medfm {

namespace {

using Shape = std::array<int64_t, 3>;

size_t voxels(const Shape& s) { return static_cast<size_t>(s[0] * s[1] * s[2]); }

std::string shape_text(const Shape& s) {
  return std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" + std::to_string(s[2]);
}

template <typename T>
void convert(const unsigned char* src, size_t count, std::vector<float>& out) {
  out.resize(count);
  for (size_t i = 0; i < count; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    out[i] = static_cast<float>(v);
  }
}

Volume read_npy_volume(const std::string& path, const std::vector<double>& spacing) {
  const std::vector<unsigned char> data = detail::read_file(path, "volume");
  auto bad = [&](const std::string& why) { return Error("volume " + path + " is not a readable .npy array: " + why); };
  const detail::NpyHeader npy = detail::parse_npy(data, bad);
  if (npy.shape.size() != 3 || npy.count() == 0) {
    throw Error(path + ": a volume .npy holds one (X, Y, Z) array; got " + std::to_string(npy.shape.size()) +
                " axes");
  }
  Volume v;
  v.shape = {npy.shape[0], npy.shape[1], npy.shape[2]};
  if (npy.count() > (size_t{1} << 31)) throw Error(path + " is implausibly large; is it corrupt?");
  const std::string& d = npy.descr;
  const size_t count = npy.count();
  size_t item = 0;
  if (d == "|u1" || d == "<u1" || d == "|i1" || d == "<i1") item = 1;
  else if (d == "<i2" || d == "<u2") item = 2;
  else if (d == "<i4" || d == "<u4" || d == "<f4") item = 4;
  else if (d == "<f8") item = 8;
  else throw bad("dtype '" + d + "' (use (u)int8, (u)int16, (u)int32, float32 or float64, little-endian)");
  if (data.size() - npy.data_offset < count * item) throw bad("voxel data truncated");
  const unsigned char* src = data.data() + npy.data_offset;
  if (d == "|u1" || d == "<u1") convert<uint8_t>(src, count, v.data);
  else if (d == "|i1" || d == "<i1") convert<int8_t>(src, count, v.data);
  else if (d == "<i2") convert<int16_t>(src, count, v.data);
  else if (d == "<u2") convert<uint16_t>(src, count, v.data);
  else if (d == "<i4") convert<int32_t>(src, count, v.data);
  else if (d == "<u4") convert<uint32_t>(src, count, v.data);
  else if (d == "<f4") convert<float>(src, count, v.data);
  else convert<double>(src, count, v.data);
  if (!spacing.empty()) {
    if (spacing.size() != 3) throw Error("a volume's spacing is three sizes in mm");
    v.spacing = {spacing[0], spacing[1], spacing[2]};
  }
  // No geometry in the file: the spacing on LPS axes, origin at voxel 0 (Python's Volume default), in RAS.
  v.affine = {};
  v.affine[0] = -v.spacing[0];
  v.affine[5] = -v.spacing[1];
  v.affine[10] = v.spacing[2];
  v.affine[15] = 1.0;
  v.source = "npy:" + path;
  return v;
}

// One output voxel along an axis of a linear resampling: the two taps and the second one's weight.
struct LinearTap {
  int64_t lo, hi;
  float w;
};

std::vector<LinearTap> linear_taps(int64_t n, int64_t m) {
  std::vector<LinearTap> taps(static_cast<size_t>(m));
  const double ratio = static_cast<double>(n) / static_cast<double>(m);
  for (int64_t i = 0; i < m; ++i) {
    const double pos = std::min(std::max((static_cast<double>(i) + 0.5) * ratio - 0.5, 0.0), static_cast<double>(n - 1));
    const int64_t lo = static_cast<int64_t>(std::floor(pos));
    taps[static_cast<size_t>(i)] = {lo, std::min(lo + 1, n - 1), static_cast<float>(pos - static_cast<double>(lo))};
  }
  return taps;
}

std::vector<int64_t> nearest_taps(int64_t n, int64_t m) {
  std::vector<int64_t> idx(static_cast<size_t>(m));
  const double ratio = static_cast<double>(n) / static_cast<double>(m);
  for (int64_t i = 0; i < m; ++i) {
    idx[static_cast<size_t>(i)] = std::min(static_cast<int64_t>(std::floor((static_cast<double>(i) + 0.5) * ratio)), n - 1);
  }
  return idx;
}

// Strides of a C-ordered (X, Y, Z) array.
std::array<int64_t, 3> strides(const Shape& s) { return {s[1] * s[2], s[2], 1}; }

}  // namespace

Volume read_volume(const std::string& path, const std::vector<double>& npy_spacing) {
  Volume v;
  if (detail::ends_with_nocase(path, ".nii") || detail::ends_with_nocase(path, ".nii.gz")) {
    v = detail::read_nifti(path);
  } else if (detail::ends_with_nocase(path, ".npy")) {
    v = read_npy_volume(path, npy_spacing);
  } else {
    throw Error("cannot read volume " + path + ": use a .nii, .nii.gz or .npy (X, Y, Z) file");
  }
  size_t bad = 0;
  for (float x : v.data) bad += std::isfinite(x) ? 0 : 1;
  if (bad) throw Error(path + ": the volume has " + std::to_string(bad) + " NaN or infinite voxels; clean it first");
  return v;
}

Shape grid_shape(const Shape& shape, const std::array<double, 3>& spacing, const std::vector<double>& target) {
  if (target.size() != 3) throw Error("a target spacing is three sizes in mm");
  Shape out{};
  for (size_t a = 0; a < 3; ++a) {
    if (!(target[a] > 0.0) || !std::isfinite(target[a])) throw Error("spacing must be three positive sizes in mm");
    // Python's round(): half to even, which nearbyint does in the default rounding mode.
    const double n = std::nearbyint(static_cast<double>(shape[a]) * spacing[a] / target[a]);
    out[a] = std::max<int64_t>(1, static_cast<int64_t>(n));
  }
  return out;
}

std::vector<float> resample_volume(const std::vector<float>& data, const Shape& shape, const Shape& out) {
  if (data.size() != voxels(shape)) throw Error("resample_volume: the data does not match its shape");
  std::vector<float> cur = data;
  Shape cs = shape;
  for (size_t axis = 0; axis < 3; ++axis) {
    const int64_t n = cs[axis], m = out[axis];
    if (n == m) continue;
    const auto taps = linear_taps(n, m);
    Shape ns = cs;
    ns[axis] = m;
    std::vector<float> next(voxels(ns));
    const auto st = strides(cs);
    const auto nt = strides(ns);
    for (int64_t x = 0; x < ns[0]; ++x) {
      for (int64_t y = 0; y < ns[1]; ++y) {
        for (int64_t z = 0; z < ns[2]; ++z) {
          int64_t idx[3] = {x, y, z};
          const LinearTap& t = taps[static_cast<size_t>(idx[axis])];
          idx[axis] = t.lo;
          const float a = cur[static_cast<size_t>(idx[0] * st[0] + idx[1] * st[1] + idx[2] * st[2])];
          idx[axis] = t.hi;
          const float b = cur[static_cast<size_t>(idx[0] * st[0] + idx[1] * st[1] + idx[2] * st[2])];
          // numpy: take(lo) * (1 - w) + take(hi) * w, each step in float32.
          const float one_minus = 1.0f - t.w;
          const float left = a * one_minus;
          const float right = b * t.w;
          next[static_cast<size_t>(x * nt[0] + y * nt[1] + z * nt[2])] = left + right;
        }
      }
    }
    cur.swap(next);
    cs = ns;
  }
  return cur;
}

std::vector<uint16_t> resample_labels(const std::vector<uint16_t>& labels, const Shape& shape, const Shape& out) {
  if (labels.size() != voxels(shape)) throw Error("resample_labels: the label map does not match its shape");
  if (shape == out) return labels;
  const auto ix = nearest_taps(shape[0], out[0]), iy = nearest_taps(shape[1], out[1]), iz = nearest_taps(shape[2], out[2]);
  const auto st = strides(shape);
  std::vector<uint16_t> result(voxels(out));
  size_t o = 0;
  for (int64_t x = 0; x < out[0]; ++x) {
    for (int64_t y = 0; y < out[1]; ++y) {
      const int64_t row = ix[static_cast<size_t>(x)] * st[0] + iy[static_cast<size_t>(y)] * st[1];
      for (int64_t z = 0; z < out[2]; ++z) result[o++] = labels[static_cast<size_t>(row + iz[static_cast<size_t>(z)])];
    }
  }
  return result;
}

std::vector<int64_t> window_starts(int64_t size, int64_t roi, double overlap) {
  if (roi < 1 || size < roi) throw Error("window_starts needs 1 <= roi <= size");
  const int64_t step = roi == size ? roi : std::max<int64_t>(static_cast<int64_t>(static_cast<double>(roi) * (1.0 - overlap)), 1);
  std::vector<int64_t> starts;
  const int64_t n = (size + step - 1) / step;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t start = i * step;
    starts.push_back(std::min(start, size - roi));
    if (start + roi >= size) break;
  }
  return starts;
}

std::vector<float> importance_map(const Shape& roi, double sigma_scale) {
  std::vector<std::vector<float>> g(3);
  for (size_t a = 0; a < 3; ++a) {
    const int64_t n = roi[a];
    const float centre = static_cast<float>((static_cast<double>(n) - 1.0) / 2.0);
    const float sigma = static_cast<float>(static_cast<double>(n) * sigma_scale);
    const float denom = (-2.0f * sigma) * sigma;
    for (int64_t i = 0; i < n; ++i) {
      const float x = static_cast<float>(i) - centre;
      g[a].push_back(std::exp((x * x) / denom));
    }
  }
  std::vector<float> w(voxels(roi));
  size_t o = 0;
  float lowest = INFINITY;
  for (int64_t x = 0; x < roi[0]; ++x) {
    for (int64_t y = 0; y < roi[1]; ++y) {
      const float xy = (1.0f * g[0][static_cast<size_t>(x)]) * g[1][static_cast<size_t>(y)];
      for (int64_t z = 0; z < roi[2]; ++z) {
        w[o] = xy * g[2][static_cast<size_t>(z)];
        lowest = std::min(lowest, w[o]);
        ++o;
      }
    }
  }
  const float floor = static_cast<float>(std::max(static_cast<double>(lowest), 1e-3));
  for (float& v : w) v = std::max(v, floor);
  return w;
}

std::vector<uint16_t> segment_grid(const Model& model, const std::vector<float>& raw, const Shape& shape,
                                   const SlidingWindowOptions& options, int64_t* num_classes) {
  const ModelMeta& meta = model.meta();
  const PreprocessSpec& pre = meta.preprocess;
  if (!pre.is_volume()) {
    throw Error(model.path() + " takes 2-D images (" + std::to_string(pre.height) + "x" + std::to_string(pre.width) +
                "); a volume needs a 3-D segmentation model (input X,Y,Z)");
  }
  if (meta.task != Task::Segmentation) {
    throw Error(model.path() + " is a " + std::string(task_name(meta.task)) +
                " model; a volume's label map needs a segmentation model");
  }
  if (!(options.overlap >= 0.0 && options.overlap < 1.0)) {
    throw Error("sliding window overlap must be in [0, 1), got " + std::to_string(options.overlap));
  }
  if (options.sw_batch_size < 1) throw Error("sliding window batch size must be >= 1");
  if (raw.size() != voxels(shape) || voxels(shape) == 0) throw Error("segment_grid: the volume does not match its shape");
  const Shape roi{pre.height, pre.width, pre.depth};
  const float mean = pre.mean[0], sd = pre.std[0];

  // 1. Preprocess the whole volume (runtime.preprocess.raw_to_unit, then (x - mean) / std, all float32).
  std::vector<float> x(raw.size());
  if (pre.window) {
    const float lo = static_cast<float>(pre.window->first), hi = static_cast<float>(pre.window->second);
    const float range = static_cast<float>(pre.window->second - pre.window->first);
    for (size_t i = 0; i < raw.size(); ++i) {
      if (!std::isfinite(raw[i])) throw Error("the volume has NaN or infinite voxels; clean it first");
      x[i] = ((std::min(std::max(raw[i], lo), hi) - lo) / range - mean) / sd;
    }
  } else {
    for (size_t i = 0; i < raw.size(); ++i) {
      if (!std::isfinite(raw[i])) throw Error("the volume has NaN or infinite voxels; clean it first");
      if (raw[i] < -1e-3f || raw[i] > 1.0f + 1e-3f) {
        throw Error("a model without an intensity window takes volumes in [0, 1]; rescale it or export the model "
                    "with a window");
      }
      x[i] = (std::min(std::max(raw[i], 0.0f), 1.0f) - mean) / sd;
    }
  }
  // 2. Pad an axis smaller than the window with what 0 becomes (air: the window's low end), half before.
  Shape before{}, size = shape;
  for (size_t a = 0; a < 3; ++a) {
    const int64_t pad = std::max<int64_t>(roi[a] - shape[a], 0);
    before[a] = pad / 2;
    size[a] = shape[a] + pad;
  }
  if (size != shape) {
    const float cval = (0.0f - mean) / sd;
    std::vector<float> padded(voxels(size), cval);
    const auto so = strides(shape), sp = strides(size);
    for (int64_t i = 0; i < shape[0]; ++i) {
      for (int64_t j = 0; j < shape[1]; ++j) {
        std::copy_n(x.begin() + i * so[0] + j * so[1], shape[2],
                    padded.begin() + (i + before[0]) * sp[0] + (j + before[1]) * sp[1] + before[2]);
      }
    }
    x.swap(padded);
  }
  // 3. Windows in itertools.product order (the last axis fastest), run sw_batch_size at a time.
  std::vector<std::array<int64_t, 3>> windows;
  const auto sx = window_starts(size[0], roi[0], options.overlap), sy = window_starts(size[1], roi[1], options.overlap),
             sz = window_starts(size[2], roi[2], options.overlap);
  for (int64_t a : sx) {
    for (int64_t b : sy) {
      for (int64_t c : sz) windows.push_back({a, b, c});
    }
  }
  const std::vector<float> weights = importance_map(roi);
  const auto st = strides(size), sr = strides(roi);
  const size_t per_window = voxels(roi);
  std::vector<float> count(voxels(size), 0.0f);
  for (const auto& w : windows) {
    for (int64_t i = 0; i < roi[0]; ++i) {
      for (int64_t j = 0; j < roi[1]; ++j) {
        float* dst = count.data() + (w[0] + i) * st[0] + (w[1] + j) * st[1] + w[2];
        const float* wt = weights.data() + i * sr[0] + j * sr[1];
        for (int64_t k = 0; k < roi[2]; ++k) dst[k] += wt[k];
      }
    }
  }
  const int64_t fixed = model.fixed_batch();
  const int64_t sw = fixed > 0 ? fixed : options.sw_batch_size;
  const int64_t total = static_cast<int64_t>(windows.size());
  std::vector<float> out;
  int64_t classes = 0;
  std::vector<float> batch;
  for (int64_t start = 0; start < total; start += sw) {
    const int64_t n = std::min(sw, total - start);
    const int64_t run_n = fixed > 0 ? fixed : n;  // a fixed-batch engine gets its batch, the last window repeated
    batch.assign(static_cast<size_t>(run_n) * per_window, 0.0f);
    for (int64_t b = 0; b < run_n; ++b) {
      const auto& w = windows[static_cast<size_t>(start + std::min(b, n - 1))];
      float* dst = batch.data() + static_cast<size_t>(b) * per_window;
      for (int64_t i = 0; i < roi[0]; ++i) {
        for (int64_t j = 0; j < roi[1]; ++j) {
          std::copy_n(x.begin() + (w[0] + i) * st[0] + (w[1] + j) * st[1] + w[2], roi[2], dst + i * sr[0] + j * sr[1]);
        }
      }
    }
    std::vector<int64_t> oshape;
    const std::vector<float> pred = model.logits(batch.data(), run_n, oshape);
    if (oshape.size() != 5 || oshape[2] != roi[0] || oshape[3] != roi[1] || oshape[4] != roi[2]) {
      throw Error(model.path() + ": the model returned class maps of another size than its windows (" +
                  shape_text(roi) + "); it must return one map per class at the window's size");
    }
    if (out.empty()) {
      classes = oshape[1];
      if (classes < 1 || classes > 65536) throw Error(model.path() + " returned " + std::to_string(classes) + " classes");
      out.assign(static_cast<size_t>(classes) * voxels(size), 0.0f);
    }
    const size_t plane = voxels(size);
    for (int64_t b = 0; b < n; ++b) {
      const auto& w = windows[static_cast<size_t>(start + b)];
      for (int64_t k = 0; k < classes; ++k) {
        const float* p = pred.data() + (static_cast<size_t>(b * classes + k)) * per_window;
        float* o = out.data() + static_cast<size_t>(k) * plane;
        for (int64_t i = 0; i < roi[0]; ++i) {
          for (int64_t j = 0; j < roi[1]; ++j) {
            float* dst = o + (w[0] + i) * st[0] + (w[1] + j) * st[1] + w[2];
            const float* src = p + i * sr[0] + j * sr[1];
            const float* wt = weights.data() + i * sr[0] + j * sr[1];
            for (int64_t z = 0; z < roi[2]; ++z) dst[z] += src[z] * wt[z];
          }
        }
      }
    }
    if (options.progress) options.progress(std::min(start + sw, total), total);
  }
  // 4. Divide by the summed weights, crop the padding, argmax (the first of equal maxima, as numpy).
  const size_t plane = voxels(size);
  std::vector<uint16_t> labels(voxels(shape), 0);
  std::vector<float> best(voxels(shape));
  const auto so = strides(shape);
  for (int64_t k = 0; k < classes; ++k) {
    const float* o = out.data() + static_cast<size_t>(k) * plane;
    for (int64_t i = 0; i < shape[0]; ++i) {
      for (int64_t j = 0; j < shape[1]; ++j) {
        for (int64_t z = 0; z < shape[2]; ++z) {
          const size_t src = static_cast<size_t>((i + before[0]) * st[0] + (j + before[1]) * st[1] + z + before[2]);
          const size_t dst = static_cast<size_t>(i * so[0] + j * so[1] + z);
          const float v = o[src] / count[src];
          if (k == 0 || v > best[dst]) {
            best[dst] = v;
            labels[dst] = static_cast<uint16_t>(k);
          }
        }
      }
    }
  }
  if (num_classes) *num_classes = classes;
  return labels;
}

std::vector<uint16_t> segment_volume(const Model& model, const Volume& volume, const SlidingWindowOptions& options,
                                     int64_t* num_classes) {
  const PreprocessSpec& pre = model.meta().preprocess;  // segment_grid refuses a 2-D model
  if (pre.spacing.empty()) return segment_grid(model, volume.data, volume.shape, options, num_classes);
  const Shape grid = grid_shape(volume.shape, volume.spacing, pre.spacing);
  if (grid == volume.shape) return segment_grid(model, volume.data, volume.shape, options, num_classes);
  const std::vector<float> resampled = resample_volume(volume.data, volume.shape, grid);
  const std::vector<uint16_t> labels = segment_grid(model, resampled, grid, options, num_classes);
  return resample_labels(labels, grid, volume.shape);
}

void write_volume_mask(const std::string& path, const std::vector<uint16_t>& mask, const Volume& volume,
                       const std::vector<std::string>& label_names) {
  if (mask.size() != voxels(volume.shape)) {
    throw Error("cannot write mask " + path + ": it is not on the grid of " + volume.source + " (" +
                shape_text(volume.shape) + ")");
  }
  // Back into the file's own voxel order (NIfTI inputs); other inputs keep the LPS array.
  Shape shape = volume.shape;
  std::vector<uint16_t> arr;
  const std::vector<uint16_t>* out = &mask;
  if (volume.from_nifti) {
    shape = volume.source_shape;
    arr.resize(mask.size());
    const auto ss = strides(shape), ls = strides(volume.shape);
    for (int64_t x = 0; x < volume.shape[0]; ++x) {
      for (int64_t y = 0; y < volume.shape[1]; ++y) {
        for (int64_t z = 0; z < volume.shape[2]; ++z) {
          const int64_t lps[3] = {x, y, z};
          int64_t src[3] = {0, 0, 0};
          for (int a = 0; a < 3; ++a) {
            const int ax = volume.source_axis[static_cast<size_t>(a)];
            src[ax] = volume.source_flip[static_cast<size_t>(a)] ? shape[static_cast<size_t>(ax)] - 1 - lps[a] : lps[a];
          }
          arr[static_cast<size_t>(src[0] * ss[0] + src[1] * ss[1] + src[2] * ss[2])] =
              mask[static_cast<size_t>(x * ls[0] + y * ls[1] + z)];
        }
      }
    }
    out = &arr;
  }
  if (detail::ends_with_nocase(path, ".nii") || detail::ends_with_nocase(path, ".nii.gz")) {
    detail::write_nifti_labels(path, *out, shape, volume.from_nifti ? volume.source_affine : volume.affine, label_names);
    return;
  }
  if (!detail::ends_with_nocase(path, ".npy")) {
    throw Error("cannot write mask " + path + ": name a .nii, .nii.gz or .npy file");
  }
  bool wide = false;
  for (uint16_t v : *out) wide = wide || v > 255;
  std::string bytes = detail::npy_header(wide ? "<u2" : "|u1", {shape[0], shape[1], shape[2]});
  bytes.reserve(bytes.size() + out->size() * (wide ? 2 : 1));
  for (uint16_t v : *out) {
    bytes.push_back(static_cast<char>(v & 0xff));
    if (wide) bytes.push_back(static_cast<char>(v >> 8));
  }
  detail::write_file_atomic(path, bytes, "mask");
}

}  // namespace medfm
