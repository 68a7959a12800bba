// Model: metadata + an engine backend. The ONNX Runtime backend is the only file that includes its headers.
//
// ORT_API_MANUAL_INIT (set by CMake for this target) stops onnxruntime_cxx_api.h from fetching the API table
// in a static initialiser, where a library older than the headers would give a null table and crash later;
// ensure_ort_api() asks for it explicitly and turns that case into a medfm::Error.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "medfm/runtime.hpp"

namespace medfm {

class Backend {
 public:
  virtual ~Backend() = default;
  /// Runs an NCHW float batch; returns the first output and sets its shape ([batch, classes] or, for dense
  /// models, [batch, classes, height, width]).
  virtual std::vector<float> infer(const float* input, int64_t batch, std::vector<int64_t>& shape) const = 0;
  /// The exported batch size, or 0 for a dynamic batch axis.
  virtual int64_t fixed_batch() const = 0;
};

namespace {

void ensure_ort_api() {
  static std::once_flag once;
  static const OrtApi* api = nullptr;
  std::call_once(once, [] {
    api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (api != nullptr) Ort::InitApi(api);
  });
  if (api == nullptr) {
    throw Error(std::string("the ONNX Runtime library loaded (") + OrtGetApiBase()->GetVersionString() +
                ") is older than the headers this runtime was built with (API " + std::to_string(ORT_API_VERSION) +
                "); rebuild against a matching onnxruntime");
  }
}

Ort::Env& ort_env() {
  ensure_ort_api();
  // One environment per process (ONNX Runtime's rule); function-local static init is thread-safe.
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "medfm_runtime");
  return env;
}

class OrtBackend final : public Backend {
 public:
  OrtBackend(const std::string& path, const ModelOptions& options) {
    Ort::Env& env = ort_env();
    Ort::SessionOptions so;
    if (options.intra_op_threads > 0) so.SetIntraOpNumThreads(options.intra_op_threads);
    if (options.inter_op_threads > 0) so.SetInterOpNumThreads(options.inter_op_threads);
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    session_ = std::make_unique<Ort::Session>(env, path.c_str(), so);
    if (session_->GetInputCount() != 1 || session_->GetOutputCount() < 1) {
      throw Error(path + " has " + std::to_string(session_->GetInputCount()) +
                  " inputs; a medfm model has exactly one image input");
    }
    Ort::AllocatorWithDefaultOptions alloc;
    input_name_ = session_->GetInputNameAllocated(0, alloc).get();
    output_name_ = session_->GetOutputNameAllocated(0, alloc).get();
    // The shape info views into its TypeInfo, so the TypeInfo must outlive it.
    Ort::TypeInfo in_type = session_->GetInputTypeInfo(0);
    auto in_info = in_type.GetTensorTypeAndShapeInfo();
    if (in_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw Error(path + " takes a non-float32 input; this runtime feeds float32 NCHW (export with fp32 I/O)");
    }
    input_shape_ = in_info.GetShape();
    if (input_shape_.size() != 4 && input_shape_.size() != 5) {
      throw Error(path + " input has rank " + std::to_string(input_shape_.size()) +
                  "; expected NCHW (rank 4) or, for a volume model, NCXYZ (rank 5)");
    }
    Ort::TypeInfo out_type = session_->GetOutputTypeInfo(0);
    auto out_shape = out_type.GetTensorTypeAndShapeInfo().GetShape();
    if (out_shape.size() >= 2 && out_shape[1] > 0) static_classes_ = out_shape[1];
    output_rank_ = out_shape.size();
    Ort::ModelMetadata md = session_->GetModelMetadata();
    for (auto& key : md.GetCustomMetadataMapKeysAllocated(alloc)) {
      props_[key.get()] = md.LookupCustomMetadataMapAllocated(key.get(), alloc).get();
    }
  }

  const std::map<std::string, std::string>& props() const { return props_; }
  const std::vector<int64_t>& input_shape() const { return input_shape_; }
  int64_t static_classes() const { return static_classes_; }
  size_t output_rank() const { return output_rank_; }
  int64_t fixed_batch() const override { return input_shape_[0] > 0 ? input_shape_[0] : 0; }

  std::vector<float> infer(const float* input, int64_t batch, std::vector<int64_t>& out_shape) const override {
    std::vector<int64_t> shape = input_shape_;
    if (shape[0] > 0 && shape[0] != batch) {
      throw Error("this model was exported with a fixed batch of " + std::to_string(shape[0]) + ", got " +
                  std::to_string(batch) + " images; re-export with a dynamic batch axis");
    }
    shape[0] = batch;
    for (size_t k = 1; k < shape.size(); ++k) {
      if (shape[k] <= 0) throw Error("the model's input has a dynamic axis " + std::to_string(k) + "; re-export it");
    }
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    // No shared mutable state: Session::Run is thread-safe and every buffer here is per call.
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value tensor = Ort::Value::CreateTensor<float>(mem, const_cast<float*>(input), count, shape.data(), shape.size());
    const char* in_names[] = {input_name_.c_str()};
    const char* out_names[] = {output_name_.c_str()};
    auto outputs = session_->Run(Ort::RunOptions{nullptr}, in_names, &tensor, 1, out_names, 1);
    auto info = outputs[0].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      throw Error("model output is not float32 logits");
    }
    out_shape = info.GetShape();
    if ((out_shape.size() != 2 && out_shape.size() != 4 && out_shape.size() != 5) || out_shape[0] != batch) {
      throw Error("model output has shape rank " + std::to_string(out_shape.size()) +
                  "; expected (batch, classes) logits or (batch, classes, *spatial) class maps");
    }
    const float* data = outputs[0].GetTensorData<float>();
    return std::vector<float>(data, data + info.GetElementCount());
  }

 private:
  std::unique_ptr<Ort::Session> session_;
  std::string input_name_, output_name_;
  std::vector<int64_t> input_shape_;
  int64_t static_classes_ = -1;
  size_t output_rank_ = 0;
  std::map<std::string, std::string> props_;
};

}  // namespace

Model::Model(std::string path, ModelMeta meta, std::unique_ptr<Backend> backend)
    : path_(std::move(path)), meta_(std::move(meta)), backend_(std::move(backend)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

std::string Model::runtime_version() { return OrtGetApiBase()->GetVersionString(); }

Model Model::load(const std::string& path, const ModelOptions& options) {
  if (!std::ifstream(path, std::ios::binary)) throw Error("cannot open model " + path + ": no such file or not readable");
  std::unique_ptr<OrtBackend> backend;
  try {
    backend = std::make_unique<OrtBackend>(path, options);
  } catch (const Ort::Exception& e) {
    throw Error("cannot load model " + path + " with ONNX Runtime: " + e.what());
  }
  ModelMeta meta = parse_metadata(backend->props(), path);
  const auto& shape = backend->input_shape();
  const PreprocessSpec& pre = meta.preprocess;
  std::vector<int64_t> expect = {pre.channels, pre.height, pre.width};
  std::string size = std::to_string(pre.height) + "x" + std::to_string(pre.width);
  if (pre.is_volume()) {
    expect.push_back(pre.depth);
    size += "x" + std::to_string(pre.depth);
  }
  if (shape.size() != expect.size() + 1) {
    throw Error(path + " takes rank-" + std::to_string(shape.size()) + " inputs but its metadata describes " +
                (pre.is_volume() ? "volumes (input X,Y,Z)" : "images (input H,W)") + "; re-export it");
  }
  for (size_t k = 0; k < expect.size(); ++k) {
    if (shape[k + 1] > 0 && shape[k + 1] != expect[k]) {
      throw Error(path + ": input shape does not match its metadata (channels " + std::to_string(pre.channels) +
                  ", size " + size + "); re-export it");
    }
  }
  // A segmentation model outputs class maps (rank 4), a classifier one row per image (rank 2); a mismatch is a
  // model exported with the wrong metadata. Rank 0 means ONNX Runtime could not tell (checked at run time).
  const size_t rank = backend->output_rank();
  const bool dense = meta.task == Task::Segmentation;
  const size_t want_rank = dense ? shape.size() : 2u;
  if (pre.is_volume() && !dense) {
    throw Error(path + " takes volumes but says task " + task_name(meta.task) +
                "; this runtime runs 3-D segmentation models only; re-export it");
  }
  if (rank != 0 && rank != want_rank) {
    throw Error(path + " says task " + task_name(meta.task) + " but outputs rank-" + std::to_string(rank) +
                " tensors (" + (dense ? "segmentation needs (batch, classes, *spatial) class maps"
                                      : "a classifier outputs (batch, classes)") + "); re-export it");
  }
  if (backend->static_classes() > 0 && !meta.label_names.empty() &&
      static_cast<int64_t>(meta.label_names.size()) != backend->static_classes()) {
    throw Error(path + " has " + std::to_string(meta.label_names.size()) + " label names but " +
                std::to_string(backend->static_classes()) + " outputs; re-export it");
  }
  return Model(path, std::move(meta), std::move(backend));
}

int64_t Model::fixed_batch() const { return backend_->fixed_batch(); }

std::vector<float> Model::logits(const float* input, int64_t batch, std::vector<int64_t>& shape) const {
  if (input == nullptr || batch <= 0) throw Error("run needs a non-empty batch (batch >= 1)");
  std::vector<float> out;
  try {
    out = backend_->infer(input, batch, shape);
  } catch (const Ort::Exception& e) {
    throw Error("inference failed on " + path_ + ": " + e.what());
  }
  const size_t want = meta_.task != Task::Segmentation ? 2u : (meta_.preprocess.is_volume() ? 5u : 4u);
  if (shape.size() != want) {
    throw Error(path_ + " says task " + task_name(meta_.task) + " but returned rank-" + std::to_string(shape.size()) +
                " outputs; re-export it");
  }
  if (!meta_.label_names.empty() && static_cast<int64_t>(meta_.label_names.size()) != shape[1]) {
    throw Error(path_ + " has " + std::to_string(meta_.label_names.size()) + " label names but returned " +
                std::to_string(shape[1]) + " classes; re-export it");
  }
  return out;
}

Result Model::run(const float* input, int64_t batch) const {
  if (meta_.preprocess.is_volume()) {
    throw Error(path_ + " is a 3-D segmentation model: its windows' class maps are blended over a whole volume "
                "(segment_volume; medfm-run predict MODEL VOLUME.nii.gz)");
  }
  Result r;
  r.batch = batch;
  std::vector<int64_t> shape;
  r.logits = logits(input, batch, shape);
  r.num_classes = shape[1];
  const bool dense = meta_.task == Task::Segmentation;
  if (dense) {
    r.map_height = shape[2];
    r.map_width = shape[3];
    r.masks = argmax_maps(r.logits.data(), batch, r.num_classes, r.map_height, r.map_width);
    return r;
  }
  r.probabilities = probabilities(r.logits, r.num_classes, meta_.task);
  r.top1.resize(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) {
    const float* row = r.logits.data() + i * r.num_classes;
    r.top1[static_cast<size_t>(i)] = static_cast<int>(std::max_element(row, row + r.num_classes) - row);
  }
  return r;
}

Result Model::predict(const std::vector<ImageView>& images) const {
  const std::vector<float> batch = preprocess_batch(images, meta_.preprocess);
  return run(batch.data(), static_cast<int64_t>(images.size()));
}

}  // namespace medfm
