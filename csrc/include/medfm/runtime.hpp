// medfm_runtime: run a model exported by `medfm-compress export` from C++ (scanner consoles, edge boxes).
//
// The ONNX file carries its preprocessing, task and label names in `metadata_props` (keys `medfm.*`, see
// medfm_compress/runtime/metadata.py); this library reads them, so a caller only hands over raw pixels.
//
//   auto model = medfm::Model::load("student.onnx");
//   medfm::Image img = medfm::read_image("case1.pgm");
//   medfm::Result r = model.predict({img.view()});
//   std::cout << model.meta().label_names[r.top1[0]] << " " << r.probability(0, r.top1[0]) << "\n";
//
// Every failure a caller can cause (missing or malformed model, metadata, image) throws medfm::Error with a
// one-line message; the library never aborts. Model::run / Model::predict are const and thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace medfm {

/// The one exception type of this library; what() is a one-line message saying what to fix.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---------------------------------------------------------------------------------------------------------
// Metadata

/// Mirrors Python's PreprocessSpec: raw image -> normalised NCHW float32.
struct PreprocessSpec {
  int height = 0;
  int width = 0;
  int channels = 0;                                 ///< 1 or 3
  std::vector<float> mean;                          ///< one per channel, applied after scaling to [0, 1]
  std::vector<float> std;                           ///< one per channel, > 0
  std::optional<std::pair<double, double>> window;  ///< (low, high) intensity window on raw values

  /// Throws Error if the values break the rules Python's PreprocessSpec enforces.
  void validate(const std::string& source) const;
};

/// What the model's output means: one row of class scores per image (classification), or one map of class
/// scores per pixel (segmentation: output NxKxHxW, softmax + argmax per pixel gives the label map).
enum class Task { Multiclass, Binary, Multilabel, Segmentation };
const char* task_name(Task task);

/// What a deployed model needs to be fed and read correctly (Python: medfm_compress.runtime.metadata.ModelMeta).
struct ModelMeta {
  PreprocessSpec preprocess;
  Task task = Task::Multiclass;
  std::vector<std::string> label_names;
  std::string arch;
  std::string precision = "fp32";
  std::string provenance_json = "{}";  ///< kept as the raw JSON text
};

/// Parses the flat `medfm.*` metadata_props entries; `source` names the model in error messages.
ModelMeta parse_metadata(const std::map<std::string, std::string>& props, const std::string& source);

/// Parses a JSON array of strings (as Python's json.dumps writes it, \uXXXX escapes included) into UTF-8.
std::vector<std::string> parse_json_string_array(const std::string& text);

// ---------------------------------------------------------------------------------------------------------
// Images

enum class PixelType { U8, U16, F32 };
const char* pixel_type_name(PixelType type);

/// A non-owning view of one raw image: height x width (channels == 1) or interleaved HWC (channels 1 or 3),
/// rows contiguous. U8 is scaled by 1/255, U16 by 1/65535, F32 must already lie in [0, 1] unless the model
/// has an intensity window (then every type is clipped to the window and mapped to [0, 1]).
struct ImageView {
  const void* data = nullptr;
  PixelType type = PixelType::U8;
  int height = 0;
  int width = 0;
  int channels = 1;
};

/// An owning image, as read from a file.
struct Image {
  PixelType type = PixelType::U8;
  int height = 0;
  int width = 0;
  int channels = 1;
  std::vector<unsigned char> bytes;  ///< height * width * channels pixels, native byte order

  ImageView view() const { return ImageView{bytes.data(), type, height, width, channels}; }
};

/// Reads an image file by its extension: .pgm/.ppm (binary P5/P6, 8- or 16-bit), .npy (uint8, uint16,
/// float32 or float64 little-endian; shape (H,W) or (H,W,C) with C 1 or 3), and .png when the library was
/// built with libpng (has_png_support()). Throws Error naming the file and the problem.
Image read_image(const std::string& path);
bool has_png_support();

/// Writes one preprocessed image (channels x height x width floats) into `out`; identical arithmetic to
/// Python's PreprocessSpec. Images of another size are resized with antialiased bilinear filtering, the
/// same filter as torch's F.interpolate(mode="bilinear", antialias=True, align_corners=False).
void preprocess_image(const ImageView& image, const PreprocessSpec& spec, float* out);

/// Preprocesses a batch into one NCHW float buffer.
std::vector<float> preprocess_batch(const std::vector<ImageView>& images, const PreprocessSpec& spec);

// ---------------------------------------------------------------------------------------------------------
// Inference

/// Output of one batched run. Classification: row-major [batch, num_classes] logits and probabilities, top1.
/// Segmentation: logits [batch, num_classes, map_height, map_width] and `masks`, the per-pixel argmax at the
/// model's resolution (probabilities and top1 stay empty; resize_mask takes a label map to an image's size).
struct Result {
  int64_t batch = 0;
  int64_t num_classes = 0;
  std::vector<float> logits;
  std::vector<float> probabilities;  ///< softmax (multiclass, binary) or sigmoid (multilabel)
  std::vector<int> top1;             ///< argmax of the logits per image
  int64_t map_height = 0;            ///< segmentation only: the class maps' size
  int64_t map_width = 0;
  std::vector<uint16_t> masks;       ///< segmentation only: [batch, map_height, map_width] class indices

  /// Segmentation: image i's label map at the model's resolution (map_height x map_width, row-major).
  const uint16_t* mask(int64_t i) const { return masks.data() + i * map_height * map_width; }

  float logit(int64_t i, int64_t k) const { return logits[static_cast<size_t>(i * num_classes + k)]; }
  float probability(int64_t i, int64_t k) const { return probabilities[static_cast<size_t>(i * num_classes + k)]; }
};

/// Softmax (or sigmoid for multilabel) over rows of `logits`, computed in double like the Python side.
std::vector<float> probabilities(const std::vector<float>& logits, int64_t num_classes, Task task);

/// Per-pixel argmax over the class maps of an [batch, classes, height, width] float buffer (the first of equal
/// maxima, as numpy's argmax): [batch, height, width] class indices.
std::vector<uint16_t> argmax_maps(const float* logits, int64_t batch, int64_t classes, int64_t height, int64_t width);

/// A label map resized with nearest neighbour to out_height x out_width (labels never blend), the same source
/// pixel as Python's runtime.images.resize_mask: floor((i + 0.5) * in / out).
std::vector<uint16_t> resize_mask(const uint16_t* mask, int64_t height, int64_t width, int64_t out_height,
                                  int64_t out_width);

/// Writes a label map atomically (a temporary file renamed into place): .pgm (binary P5; 8-bit when every
/// value is < 256, else 16-bit) or .npy (uint8 / uint16, shape (H, W)). Throws Error naming the file.
void write_mask(const std::string& path, const uint16_t* mask, int64_t height, int64_t width);

struct ModelOptions {
  int intra_op_threads = 0;  ///< 0: ONNX Runtime's default (one per physical core)
  int inter_op_threads = 0;  ///< 0: ONNX Runtime's default
};

class Backend;  // engine-specific part (ONNX Runtime; TensorRT where built with it)

class Model {
 public:
  /// Loads an ONNX model written by `medfm-compress export` and reads its metadata.
  static Model load(const std::string& path, const ModelOptions& options = {});

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelMeta& meta() const { return meta_; }
  const std::string& path() const { return path_; }
  /// The ONNX Runtime version actually loaded (the library, not the headers compiled against).
  static std::string runtime_version();

  /// Engine only: `input` is an already preprocessed NCHW float32 batch of `batch` images.
  Result run(const float* input, int64_t batch) const;
  /// Preprocess raw images with the model's metadata, then run them as one batch.
  Result predict(const std::vector<ImageView>& images) const;

 private:
  Model(std::string path, ModelMeta meta, std::unique_ptr<Backend> backend);
  std::string path_;
  ModelMeta meta_;
  std::unique_ptr<Backend> backend_;
};

}  // namespace medfm
