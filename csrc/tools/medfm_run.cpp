// medfm-run: predict on image files, or time a model, with the C++ runtime.
//
//   medfm-run predict MODEL.onnx IMG... [--batch N] [--threads N] [--json]
//                     [--mask-out MASK.pgm | --mask-dir DIR]   (segmentation: label maps at each image's size)
//   medfm-run predict SEG3D.onnx VOLUME.nii.gz... [--mask-out MASK.nii.gz | --mask-dir DIR] [--overlap 0.25]
//                     [--sw-batch-size 4] [--threads N] [--json]   (3-D models: sliding windows over whole volumes)
//   medfm-run latency MODEL.onnx [--batch 1] [--iterations 100] [--warmup 10] [--threads N] [--json]
//                     [--images IMG...]   (end to end: decode + preprocess + run per batch)
//   medfm-run info MODEL.onnx
//
// Exit status: 0 success, 1 a medfm::Error (message on stderr as "error: ..."), 2 bad command line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "medfm/runtime.hpp"

namespace {

const char* kUsage =
    "usage:\n"
    "  medfm-run predict MODEL.onnx IMAGE... [--batch N] [--threads N] [--json]\n"
    "                    [--mask-out MASK.pgm|.npy (one image) | --mask-dir DIR (DIR/<stem>.mask.pgm)]\n"
    "  medfm-run predict SEG3D.onnx VOLUME... [--overlap F] [--sw-batch-size N] [--threads N] [--json]\n"
    "                    [--mask-out MASK.nii.gz|.nii|.npy (one volume) | --mask-dir DIR (DIR/<name>.mask.nii.gz)]\n"
    "  medfm-run latency MODEL.onnx [--batch N] [--iterations N] [--warmup N] [--threads N] [--json]\n"
    "                    [--images IMAGE... | --images VOLUME... [--overlap F] [--sw-batch-size N]]\n"
    "  medfm-run info MODEL.onnx\n"
    "images: .pgm/.ppm (binary, 8/16-bit), .npy (uint8/uint16/float32/float64, HxW or HxWxC),\n"
    "        .png (8/16-bit gray/RGB; builds with libpng)\n"
    "volumes (3-D models): .nii, .nii.gz (NIfTI-1; .gz builds with zlib), .npy (X,Y,Z in LPS order on the model's\n"
    "        voxel grid)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string command, model;
  std::vector<std::string> images;
  std::string mask_out, mask_dir;
  int batch = -1, iterations = 100, warmup = 10, threads = 0, sw_batch_size = 4;
  double overlap = 0.25;
  bool json = false;
};

double parse_fraction(const std::string& flag, const char* value) {
  char* end = nullptr;
  const double v = std::strtod(value, &end);
  if (end == value || *end != '\0' || !(v >= 0.0 && v < 1.0)) {
    throw UsageError(flag + " needs a number in [0, 1), got '" + value + "'");
  }
  return v;
}

int parse_positive(const std::string& flag, const char* value, int minimum) {
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || v < minimum || v > 1000000) {
    throw UsageError(flag + " needs an integer >= " + std::to_string(minimum) + ", got '" + value + "'");
  }
  return static_cast<int>(v);
}

Args parse_args(int argc, char** argv) {
  if (argc < 2) throw UsageError("no command given");
  Args a;
  a.command = argv[1];
  if (a.command != "predict" && a.command != "latency" && a.command != "info") {
    throw UsageError("unknown command '" + a.command + "'");
  }
  bool in_images = a.command == "predict";
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--json") a.json = true;
    else if (arg == "--batch") a.batch = parse_positive(arg, value(), 1);
    else if (arg == "--iterations") a.iterations = parse_positive(arg, value(), 1);
    else if (arg == "--warmup") a.warmup = parse_positive(arg, value(), 0);
    else if (arg == "--threads") a.threads = parse_positive(arg, value(), 0);
    else if (arg == "--sw-batch-size" && a.command != "info") a.sw_batch_size = parse_positive(arg, value(), 1);
    else if (arg == "--overlap" && a.command != "info") a.overlap = parse_fraction(arg, value());
    else if (arg == "--images" && a.command == "latency") in_images = true;
    else if (arg == "--mask-out" && a.command == "predict") a.mask_out = value();
    else if (arg == "--mask-dir" && a.command == "predict") a.mask_dir = value();
    else if (arg.rfind("--", 0) == 0) throw UsageError("unknown option " + arg);
    else if (a.model.empty()) a.model = arg;
    else if (in_images) a.images.push_back(arg);
    else throw UsageError("unexpected argument '" + arg + "'");
  }
  if (a.model.empty()) throw UsageError("no model given");
  if (a.command == "predict" && a.images.empty()) throw UsageError("predict needs at least one image");
  if (!a.mask_out.empty() && !a.mask_dir.empty()) throw UsageError("give --mask-out or --mask-dir, not both");
  if (!a.mask_out.empty() && a.images.size() != 1) {
    throw UsageError("--mask-out names one mask file; for " + std::to_string(a.images.size()) +
                     " images use --mask-dir DIR");
  }
  return a;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// numpy.percentile's default (linear interpolation between closest ranks), as the Python harness uses.
double percentile(std::vector<double> sorted, double q) {
  std::sort(sorted.begin(), sorted.end());
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

std::string label_of(const medfm::Model& model, int k) {
  const auto& names = model.meta().label_names;
  return k >= 0 && static_cast<size_t>(k) < names.size() ? names[static_cast<size_t>(k)] : std::to_string(k);
}

std::string file_stem(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  const size_t dot = name.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

// Segmentation: each image's label map, resized (nearest) to the image's own size, written where asked; one line
// (or JSON object) per image with the mask's path and the pixels of each class.
void report_masks(const Args& a, const medfm::Model& model, const medfm::Result& r,
                  const std::vector<medfm::Image>& images, size_t start, bool& first) {
  for (int64_t i = 0; i < r.batch; ++i) {
    const medfm::Image& img = images[static_cast<size_t>(i)];
    const std::string& path = a.images[start + static_cast<size_t>(i)];
    const std::vector<uint16_t> mask = medfm::resize_mask(r.mask(i), r.map_height, r.map_width, img.height, img.width);
    std::string out;
    if (!a.mask_out.empty()) out = a.mask_out;
    else if (!a.mask_dir.empty()) out = a.mask_dir + "/" + file_stem(path) + ".mask.pgm";
    if (!out.empty()) medfm::write_mask(out, mask.data(), img.height, img.width);
    std::vector<int64_t> area(static_cast<size_t>(r.num_classes), 0);
    for (uint16_t v : mask) ++area[v];
    if (a.json) {
      std::cout << (first ? "\n" : ",\n") << "  {\"image\": " << json_string(path) << ", \"mask\": "
                << (out.empty() ? std::string("null") : json_string(out)) << ", \"height\": " << img.height
                << ", \"width\": " << img.width << ", \"areas\": {";
      for (int64_t k = 0; k < r.num_classes; ++k) {
        std::cout << (k ? ", " : "") << json_string(label_of(model, static_cast<int>(k))) << ": "
                  << area[static_cast<size_t>(k)];
      }
      std::cout << "}}";
      first = false;
    } else {
      std::cout << path << "\t" << (out.empty() ? "-" : out) << "\t";
      for (int64_t k = 0; k < r.num_classes; ++k) {
        std::cout << (k ? " " : "") << label_of(model, static_cast<int>(k)) << "=" << area[static_cast<size_t>(k)];
      }
      std::cout << "\n";
    }
  }
}

bool is_volume_file(const std::string& path) {
  auto ends = [&](const std::string& suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends(".nii") || ends(".nii.gz") || ends(".NII") || ends(".NII.GZ");
}

std::string volume_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  for (const char* suffix : {".nii.gz", ".NII.GZ", ".nii", ".NII", ".npy"}) {
    const std::string s = suffix;
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      return name.substr(0, name.size() - s.size());
    }
  }
  return name;
}

medfm::SlidingWindowOptions window_options(const Args& a, const std::string& name) {
  medfm::SlidingWindowOptions sw;
  sw.overlap = a.overlap;
  sw.sw_batch_size = a.sw_batch_size;
  if (isatty(STDERR_FILENO)) {  // a progress line on a terminal, nothing in logs
    sw.progress = [name](int64_t done, int64_t total) {
      std::fprintf(stderr, "\r%s: %lld/%lld windows", name.c_str(), static_cast<long long>(done),
                   static_cast<long long>(total));
      if (done == total) std::fprintf(stderr, "\n");
    };
  }
  return sw;
}

// 3-D segmentation: each volume read, resampled to the model's spacing, segmented by sliding windows, its label map
// put back on the volume's own grid and written; one line (or JSON object) per volume with voxels and mL per class.
// A volume that fails stops the run, and the masks this run wrote are removed.
int predict_volumes(const Args& a, const medfm::Model& model) {
  const auto& meta = model.meta();
  const auto& pre = meta.preprocess;
  const std::vector<std::string>& labels = meta.label_names;
  std::vector<std::string> written;
  try {
    for (const auto& path : a.images) {
      if (!is_volume_file(path) && path.size() >= 4 && path.compare(path.size() - 4, 4, ".npy") != 0) {
        throw medfm::Error(path + ": " + a.model + " is a 3-D model; give it volumes (.nii, .nii.gz, .npy)");
      }
    }
    if (a.json) std::cout << "[";
    bool first = true;
    for (const auto& path : a.images) {
      const auto t0 = std::chrono::steady_clock::now();
      const medfm::Volume volume = medfm::read_volume(path, pre.spacing);
      int64_t classes = 0;
      const std::vector<uint16_t> mask = medfm::segment_volume(model, volume, window_options(a, volume_name(path)),
                                                               &classes);
      std::string out;
      if (!a.mask_out.empty()) {
        out = a.mask_out;
      } else if (!a.mask_dir.empty()) {
        const bool npy = !is_volume_file(path);
        out = a.mask_dir + "/" + volume_name(path) + ".mask" +
              (npy ? ".npy" : medfm::has_gzip_support() ? ".nii.gz" : ".nii");
      }
      if (!out.empty()) {
        medfm::write_volume_mask(out, mask, volume, labels);
        written.push_back(out);
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::vector<int64_t> count(static_cast<size_t>(classes), 0);
      for (uint16_t v : mask) ++count[v];
      const double voxel_ml = volume.spacing[0] * volume.spacing[1] * volume.spacing[2] / 1000.0;
      if (a.json) {
        std::cout << (first ? "\n" : ",\n") << "  {\"volume\": " << json_string(path) << ", \"mask\": "
                  << (out.empty() ? std::string("null") : json_string(out)) << ", \"shape\": [" << volume.shape[0]
                  << ", " << volume.shape[1] << ", " << volume.shape[2] << "], \"spacing_mm\": ["
                  << num(volume.spacing[0]) << ", " << num(volume.spacing[1]) << ", " << num(volume.spacing[2])
                  << "], \"seconds\": " << num(seconds) << ", \"voxels\": {";
        for (int64_t k = 0; k < classes; ++k) {
          std::cout << (k ? ", " : "") << json_string(label_of(model, static_cast<int>(k))) << ": "
                    << count[static_cast<size_t>(k)];
        }
        std::cout << "}, \"volume_ml\": {";
        for (int64_t k = 1; k < classes; ++k) {
          std::cout << (k > 1 ? ", " : "") << json_string(label_of(model, static_cast<int>(k))) << ": "
                    << num(static_cast<double>(count[static_cast<size_t>(k)]) * voxel_ml);
        }
        std::cout << "}}";
        first = false;
      } else {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.2f s", seconds);
        std::cout << path << "\t" << (out.empty() ? "-" : out) << "\t" << volume.shape[0] << "x" << volume.shape[1]
                  << "x" << volume.shape[2] << "\t" << buf << "\t";
        for (int64_t k = 1; k < classes; ++k) {
          std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(count[static_cast<size_t>(k)]) * voxel_ml);
          std::cout << (k > 1 ? " " : "") << label_of(model, static_cast<int>(k)) << "=" << buf << "mL";
        }
        std::cout << "\n";
      }
      std::cout.flush();
    }
    if (a.json) std::cout << "\n]\n";
  } catch (...) {
    for (const auto& p : written) std::remove(p.c_str());
    throw;
  }
  return 0;
}

int cmd_predict(const Args& a) {
  medfm::ModelOptions opts;
  opts.intra_op_threads = a.threads;
  opts.inter_op_threads = 1;  // as the Python runtime: one graph at a time, parallel inside each operator
  const medfm::Model model = medfm::Model::load(a.model, opts);
  const bool dense = model.meta().task == medfm::Task::Segmentation;
  if (model.meta().preprocess.is_volume()) {
    if (a.batch > 0) {
      throw medfm::Error(a.model + " is a 3-D model: it runs a volume's windows --sw-batch-size at a time; --batch "
                         "is for images");
    }
    if (!a.mask_dir.empty()) {
      struct stat st {};
      if (stat(a.mask_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        throw medfm::Error("--mask-dir " + a.mask_dir + " is not a folder; create it first");
      }
    }
    return predict_volumes(a, model);
  }
  for (const auto& path : a.images) {
    if (is_volume_file(path)) {
      throw medfm::Error(path + " is a volume; " + a.model + " takes 2-D images (" +
                         std::to_string(model.meta().preprocess.height) + "x" +
                         std::to_string(model.meta().preprocess.width) + "): a volume needs a 3-D segmentation model");
    }
  }
  if (!dense && (!a.mask_out.empty() || !a.mask_dir.empty())) {
    throw medfm::Error(a.model + " is a " + medfm::task_name(model.meta().task) +
                       " model; --mask-out / --mask-dir need a segmentation model");
  }
  if (!a.mask_dir.empty()) {
    struct stat st {};
    if (stat(a.mask_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      throw medfm::Error("--mask-dir " + a.mask_dir + " is not a folder; create it first");
    }
  }
  // A bad image among many must leave no masks behind: every image decodes before the first mask is written.
  if (!a.mask_dir.empty() && a.images.size() > 1) {
    for (const auto& path : a.images) medfm::read_image(path);
  }
  const size_t batch = a.batch > 0 ? static_cast<size_t>(a.batch) : 16;
  if (a.json) std::cout << "[";
  bool first = true;
  for (size_t start = 0; start < a.images.size(); start += batch) {
    const size_t end = std::min(start + batch, a.images.size());
    std::vector<medfm::Image> images;
    std::vector<medfm::ImageView> views;
    for (size_t i = start; i < end; ++i) images.push_back(medfm::read_image(a.images[i]));
    for (const auto& img : images) views.push_back(img.view());
    const medfm::Result r = model.predict(views);
    if (dense) {
      report_masks(a, model, r, images, start, first);
      continue;
    }
    for (int64_t i = 0; i < r.batch; ++i) {
      const std::string& path = a.images[start + static_cast<size_t>(i)];
      const int top = r.top1[static_cast<size_t>(i)];
      if (model.meta().task == medfm::Task::Regression) {  // one value per target, no class to pick
        if (a.json) {
          std::cout << (first ? "\n" : ",\n") << "  {\"image\": " << json_string(path) << ", \"values\": {";
          for (int64_t k = 0; k < r.num_classes; ++k) {
            std::cout << (k ? ", " : "") << json_string(label_of(model, static_cast<int>(k))) << ": "
                      << num(r.probability(i, k));
          }
          std::cout << "}}";
          first = false;
        } else {
          std::cout << path << "\t";
          for (int64_t k = 0; k < r.num_classes; ++k) {
            std::cout << (k ? " " : "") << label_of(model, static_cast<int>(k)) << "=" << num(r.probability(i, k));
          }
          std::cout << "\n";
        }
        continue;
      }
      if (a.json) {
        std::cout << (first ? "\n" : ",\n") << "  {\"image\": " << json_string(path) << ", \"top1\": " << top
                  << ", \"label\": " << json_string(label_of(model, top)) << ", \"logits\": [";
        for (int64_t k = 0; k < r.num_classes; ++k) std::cout << (k ? ", " : "") << num(r.logit(i, k));
        std::cout << "], \"probabilities\": [";
        for (int64_t k = 0; k < r.num_classes; ++k) std::cout << (k ? ", " : "") << num(r.probability(i, k));
        std::cout << "]}";
        first = false;
      } else {
        std::cout << path << "\t" << label_of(model, top) << "\t";
        for (int64_t k = 0; k < r.num_classes; ++k) {
          char buf[64];
          std::snprintf(buf, sizeof buf, "%s%s=%.4f", k ? " " : "", label_of(model, static_cast<int>(k)).c_str(),
                        r.probability(i, k));
          std::cout << buf;
        }
        std::cout << "\n";
      }
    }
  }
  if (a.json) std::cout << "\n]\n";
  return 0;
}

int cmd_latency(const Args& a) {
  medfm::ModelOptions opts;
  opts.intra_op_threads = a.threads;
  opts.inter_op_threads = 1;  // as the Python runtime: one graph at a time, parallel inside each operator
  const medfm::Model model = medfm::Model::load(a.model, opts);
  const auto& pre = model.meta().preprocess;
  const bool volumes = pre.is_volume();
  const int batch = a.batch > 0 ? a.batch : (volumes ? a.sw_batch_size : 1);
  const bool end_to_end = !a.images.empty();
  const size_t per_image = static_cast<size_t>(pre.channels) * static_cast<size_t>(pre.height) *
                           static_cast<size_t>(pre.width) * static_cast<size_t>(volumes ? pre.depth : 1);
  // Engine-only input: fixed pseudo-random values in [-1, 1) (timing does not depend on them).
  std::vector<float> input(per_image * static_cast<size_t>(batch));
  uint32_t state = 12345u;
  for (float& v : input) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<float>(state >> 8) / 8388608.0f - 1.0f;
  }
  size_t cursor = 0;
  medfm::SlidingWindowOptions sw;
  sw.overlap = a.overlap;
  sw.sw_batch_size = a.sw_batch_size;
  auto one = [&]() {
    if (!end_to_end) {
      std::vector<int64_t> shape;
      if (volumes) model.logits(input.data(), batch, shape);
      else model.run(input.data(), batch);
      return;
    }
    if (volumes) {  // one whole volume per iteration: read, resample, sliding windows, label map
      const medfm::Volume v = medfm::read_volume(a.images[cursor++ % a.images.size()], pre.spacing);
      medfm::segment_volume(model, v, sw);
      return;
    }
    std::vector<medfm::Image> images;
    std::vector<medfm::ImageView> views;
    for (int i = 0; i < batch; ++i) images.push_back(medfm::read_image(a.images[cursor++ % a.images.size()]));
    for (const auto& img : images) views.push_back(img.view());
    model.predict(views);
  };
  for (int i = 0; i < a.warmup; ++i) one();
  std::vector<double> ms;
  ms.reserve(static_cast<size_t>(a.iterations));
  for (int i = 0; i < a.iterations; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    one();
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  double mean = 0.0;
  for (double v : ms) mean += v;
  mean /= static_cast<double>(ms.size());
  const double p50 = percentile(ms, 50), p90 = percentile(ms, 90), p99 = percentile(ms, 99);
  const double mn = *std::min_element(ms.begin(), ms.end()), mx = *std::max_element(ms.begin(), ms.end());
  const int per_iteration = end_to_end && volumes ? 1 : batch;  // a whole volume per iteration end to end
  const double throughput = 1000.0 * per_iteration / p50;
  const char* mode = end_to_end ? "end_to_end" : "engine";
  if (a.json) {
    std::cout << "{\"model\": " << json_string(a.model) << ", \"mode\": \"" << mode << "\", \"backend\": \"onnxruntime\""
              << ", \"onnxruntime_version\": " << json_string(medfm::Model::runtime_version()) << ", \"batch\": " << batch
              << ", \"threads\": " << a.threads << ", \"warmup\": " << a.warmup << ", \"iterations\": " << a.iterations
              << ", \"p50_ms\": " << num(p50) << ", \"p90_ms\": " << num(p90) << ", \"p99_ms\": " << num(p99)
              << ", \"mean_ms\": " << num(mean) << ", \"min_ms\": " << num(mn) << ", \"max_ms\": " << num(mx)
              << ", \"per_image_p50_ms\": " << num(p50 / per_iteration) << ", \"throughput_per_s\": " << num(throughput)
              << ", \"samples_ms\": [";
    for (size_t i = 0; i < ms.size(); ++i) std::cout << (i ? ", " : "") << num(ms[i]);
    std::cout << "]}\n";
  } else {
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "%s  %s  batch %d  threads %d  %d iterations (%d warm-up)\n"
                  "p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  mean %.3f ms  (%.1f %s/s)\n",
                  a.model.c_str(), mode, batch, a.threads, a.iterations, a.warmup, p50, p90, p99, mean, throughput,
                  end_to_end && volumes ? "volumes" : volumes ? "windows" : "images");
    std::cout << buf;
  }
  return 0;
}

int cmd_info(const Args& a) {
  const medfm::Model model = medfm::Model::load(a.model);
  const auto& m = model.meta();
  std::cout << "model        " << a.model << "\n"
            << "task         " << medfm::task_name(m.task) << "\n"
            << "labels       ";
  for (size_t i = 0; i < m.label_names.size(); ++i) std::cout << (i ? ", " : "") << m.label_names[i];
  std::cout << "\ninput        " << m.preprocess.channels << "x" << m.preprocess.height << "x" << m.preprocess.width;
  if (m.preprocess.is_volume()) std::cout << "x" << m.preprocess.depth << " (a 3-D model: sliding windows of this size)";
  if (!m.preprocess.spacing.empty()) {
    std::cout << "\nspacing      " << num(m.preprocess.spacing[0]) << "," << num(m.preprocess.spacing[1]) << ","
              << num(m.preprocess.spacing[2]) << " mm";
  }
  std::cout << "\nmean / std   ";
  for (size_t i = 0; i < m.preprocess.mean.size(); ++i) std::cout << (i ? "," : "") << num(m.preprocess.mean[i]);
  std::cout << " / ";
  for (size_t i = 0; i < m.preprocess.std.size(); ++i) std::cout << (i ? "," : "") << num(m.preprocess.std[i]);
  std::cout << "\nwindow       ";
  if (m.preprocess.window) std::cout << num(m.preprocess.window->first) << "," << num(m.preprocess.window->second);
  else std::cout << "none";
  std::cout << "\narch         " << m.arch << "\nprecision    " << m.precision
            << "\nonnxruntime  " << medfm::Model::runtime_version() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    if (argc >= 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
      std::cout << kUsage << "\n";
      return 0;
    }
    args = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << "\n" << kUsage << "\n";
    return 2;
  }
  try {
    if (args.command == "predict") return cmd_predict(args);
    if (args.command == "latency") return cmd_latency(args);
    return cmd_info(args);
  } catch (const medfm::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    // Anything else is a bug in this runtime, not a user error; still report instead of aborting.
    std::cerr << "internal error: " << e.what() << "\n";
    return 3;
  }
}
