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

#include <array>
#include <cstdint>
#include <functional>
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

/// Mirrors Python's PreprocessSpec: raw image -> normalised NCHW float32, or (3-D models, `depth` > 0) raw volume
/// -> normalised NCXYZ float32, where `medfm.input_size` "X,Y,Z" (the training patch, the sliding window's size)
/// is read as height = X, width = Y, depth = Z.
struct PreprocessSpec {
  int height = 0;
  int width = 0;
  int depth = 0;                                    ///< volumes only: the window's Z size; 0 for 2-D models
  std::vector<double> spacing;                      ///< volumes only, optional: voxel spacing (mm) of training
  int channels = 0;                                 ///< 1 or 3 (volumes: 1)
  std::vector<float> mean;                          ///< one per channel, applied after scaling to [0, 1]
  std::vector<float> std;                           ///< one per channel, > 0
  std::optional<std::pair<double, double>> window;  ///< (low, high) intensity window on raw values

  bool is_volume() const { return depth > 0; }
  /// Throws Error if the values break the rules Python's PreprocessSpec enforces.
  void validate(const std::string& source) const;
};

/// What the model's output means: one row of class scores per image (classification), one map of class
/// scores per pixel (segmentation: output NxKxHxW, softmax + argmax per pixel gives the label map), or one row of
/// values per image in the targets' own units (regression: medfm.postprocess "identity").
enum class Task { Multiclass, Binary, Multilabel, Segmentation, Regression };
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
  std::vector<float> probabilities;  ///< softmax (multiclass, binary), sigmoid (multilabel), the values (regression)
  std::vector<int> top1;             ///< argmax of the logits per image
  int64_t map_height = 0;            ///< segmentation only: the class maps' size
  int64_t map_width = 0;
  std::vector<uint16_t> masks;       ///< segmentation only: [batch, map_height, map_width] class indices

  /// Segmentation: image i's label map at the model's resolution (map_height x map_width, row-major).
  const uint16_t* mask(int64_t i) const { return masks.data() + i * map_height * map_width; }

  float logit(int64_t i, int64_t k) const { return logits[static_cast<size_t>(i * num_classes + k)]; }
  float probability(int64_t i, int64_t k) const { return probabilities[static_cast<size_t>(i * num_classes + k)]; }
};

/// Softmax (or sigmoid for multilabel) over rows of `logits`, computed in double like the Python side; a regression
/// model's outputs are its values, returned as they are.
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

  /// Engine only: `input` is an already preprocessed NCHW float32 batch of `batch` images. 2-D models only (a
  /// volume model's class maps are blended by segment_volume).
  Result run(const float* input, int64_t batch) const;
  /// Engine only, any model: the first output as it comes (`shape` set to its shape), for a preprocessed batch
  /// (NCHW, or NCXYZ for volume models).
  std::vector<float> logits(const float* input, int64_t batch, std::vector<int64_t>& shape) const;
  /// The batch size the model was exported with, or 0 when its batch axis is dynamic.
  int64_t fixed_batch() const;
  /// Preprocess raw images with the model's metadata, then run them as one batch.
  Result predict(const std::vector<ImageView>& images) const;

 private:
  Model(std::string path, ModelMeta meta, std::unique_ptr<Backend> backend);
  std::string path_;
  ModelMeta meta_;
  std::unique_ptr<Backend> backend_;
};

// ---------------------------------------------------------------------------------------------------------
// Volumes (3-D segmentation models; Python: medfm_compress.runtime.volumes and runtime.sliding_window)

/// A volume as Python's runtime.volumes.Volume holds it: float32 intensities (HU for CT), C-ordered (X, Y, Z) in LPS
/// voxel order (X toward the patient's left, Y posterior, Z superior) however the file stored it; `affine` maps
/// (x, y, z) voxel indices of that array to NIfTI (RAS+) world mm, row-major 4x4.
struct Volume {
  std::array<int64_t, 3> shape{0, 0, 0};
  std::vector<float> data;                 ///< shape[0] * shape[1] * shape[2] values, z fastest
  std::array<double, 3> spacing{1.0, 1.0, 1.0};
  std::array<double, 16> affine{};
  std::string source;
  bool from_nifti = false;                 ///< read from a NIfTI file: the fields below say how to write a mask back
  std::array<int64_t, 3> source_shape{0, 0, 0};  ///< the file's own (i, j, k) shape
  std::array<int, 3> source_axis{0, 1, 2};       ///< LPS axis a is the file's axis source_axis[a] ...
  std::array<bool, 3> source_flip{};             ///< ... reversed when source_flip[a]
  std::array<double, 16> source_affine{};        ///< the file's own voxel-to-RAS affine (nibabel's img.affine)
};

/// Reads a volume by its extension: .nii / .nii.gz (NIfTI-1, single file; any orientation, reoriented to LPS by
/// its affine as nibabel's io_orientation does; scale slope/intercept applied; .nii.gz needs zlib,
/// has_gzip_support()), or .npy ((X, Y, Z) int/uint/float, already LPS and on the model's grid: spacing
/// `npy_spacing`, or 1 mm). NaN or infinite voxels are refused. Throws Error naming the file and the problem.
Volume read_volume(const std::string& path, const std::vector<double>& npy_spacing = {});
bool has_gzip_support();

/// `shape` voxels of `spacing` mm resampled to `target` mm: the same extent, rounded half to even, at least 1.
std::array<int64_t, 3> grid_shape(const std::array<int64_t, 3>& shape, const std::array<double, 3>& spacing,
                                  const std::vector<double>& target);
/// Linear resampling of an (X, Y, Z) volume to `out` (voxel centres to voxel centres, edges clamped), one axis at
/// a time: the arithmetic of Python's runtime.volumes.resample_volume.
std::vector<float> resample_volume(const std::vector<float>& data, const std::array<int64_t, 3>& shape,
                                   const std::array<int64_t, 3>& out);
/// Nearest-neighbour resampling of an (X, Y, Z) label map (Python's runtime.volumes.resample_labels).
std::vector<uint16_t> resample_labels(const std::vector<uint16_t>& labels, const std::array<int64_t, 3>& shape,
                                      const std::array<int64_t, 3>& out);

/// Start indices of the sliding windows along an axis of `size` >= `roi` voxels (MONAI's dense_patch_slices).
std::vector<int64_t> window_starts(int64_t size, int64_t roi, double overlap);
/// The Gaussian importance map of a window (sigma 0.125 x the window per axis, peak 1, floor max(min, 1e-3)).
std::vector<float> importance_map(const std::array<int64_t, 3>& roi, double sigma_scale = 0.125);

struct SlidingWindowOptions {
  double overlap = 0.25;   ///< in [0, 1)
  int sw_batch_size = 4;   ///< windows per engine run (a model with a fixed batch runs its own)
  /// Called after every batch of windows with (done, total).
  std::function<void(int64_t, int64_t)> progress;
};

/// The label map (X, Y, Z) of a raw volume already on the model's voxel grid: the model's preprocessing (HU window
/// to [0, 1], mean/std), windows of its input size (a smaller volume padded with what air becomes), Gaussian
/// blending, per-voxel argmax (first maximum). `num_classes` (optional) receives the class count.
std::vector<uint16_t> segment_grid(const Model& model, const std::vector<float>& raw, const std::array<int64_t, 3>& shape,
                                   const SlidingWindowOptions& options = {}, int64_t* num_classes = nullptr);

/// A whole volume's label map on its own grid (LPS order, volume.shape): resampled to the model's spacing
/// (medfm.spacing; linear), segment_grid, and the label map resampled back (nearest): Python's predict on volumes.
std::vector<uint16_t> segment_volume(const Model& model, const Volume& volume, const SlidingWindowOptions& options = {},
                                     int64_t* num_classes = nullptr);

/// Writes a label map on `volume`'s grid atomically: .nii / .nii.gz (the input file's own voxel order and affine
/// for a NIfTI input, else the LPS array with volume.affine; uint8, or uint16 above 255 classes; intent "label";
/// `label_names` joined by ';' in descrip), or .npy ((X, Y, Z) uint8/uint16, in the same order as the .nii).
void write_volume_mask(const std::string& path, const std::vector<uint16_t>& mask, const Volume& volume,
                       const std::vector<std::string>& label_names = {});

}  // namespace medfm
