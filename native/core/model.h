// Model: the base of every native model (BLIP, CLIP, UNet, ...), a registry of model kinds, and the
// weight loader that maps published key names onto registered parameters.
//
// A model is a torch::nn::Module whose submodules are registered under their published key names
// ("text_decoder.bert.encoder.layer.0..."), so named_parameters() *is* the checkpoint layout.
#pragma once
#include <functional>
#include <memory>
#include <mutex>

#include "core/common.h"
#include "core/safetensors.h"

namespace rt {

struct Model : torch::nn::Module {
  // Runs a named method on named inputs with JSON options; returns named outputs.
  virtual TensorMap call(const std::string& method, const TensorMap& in, const json& options) = 0;
  // Parameter names that published files may omit because they are tied to another parameter.
  virtual std::vector<std::string> tied_keys() const { return {}; }
  // Re-establishes ties after loading (e.g. LM head = word embeddings).
  virtual void tie_weights() {}
  // Checkpoint entries that are always safe to skip (legacy buffers such as position_ids).
  virtual bool ignorable_key(const std::string& key) const { return false; }
  // Maps an alternative published name (e.g. the VAE's legacy `query`) to this module's name.
  virtual std::string canonical_key(const std::string& key) const { return key; }
  // The device parameters live on.
  at::Device device() const;
  // Serialises concurrent calls on one model (workers run on several libuv threads).
  std::mutex mutex;
  // NHWC memory format for 4-D weights and inputs (faster convolutions on CUDA with cuDNN).
  bool channels_last = false;
  // Set while frozen weights are held in bf16/fp16 (core/reduced_weights.h); the model computes in fp32.
  c10::optional<at::ScalarType> frozen_dtype;
};

using ModelFactory = std::function<std::shared_ptr<Model>(const json& config, const json& options)>;

// Registers a model kind; use from a static initializer in the model's translation unit:
//   static const bool registered = rt::register_model("blip", [](auto& c, auto& o) { ... });
bool register_model(const std::string& kind, ModelFactory factory);
std::shared_ptr<Model> create_model(const std::string& kind, const json& config, const json& options);
std::vector<std::string> model_kinds();
// Components with a model's call interface but no weights, which are not model kinds (the noise scheduler):
// each has its own JS entry point (`createScheduler`), and `modelKinds()` does not list them.
bool register_component(const std::string& name, ModelFactory factory);
std::shared_ptr<Model> create_component(const std::string& name, const json& config, const json& options);
// Builds a model whose parameters come from `files` (load_weights with every parameter required): parameters are
// not randomly initialised first, and on CPU they are views of the mapped files. `report` receives load_weights'
// report plus constructMs and loadMs.
std::shared_ptr<Model> create_model_from_files(const std::string& kind, const json& config, const json& options,
                                              const std::vector<std::string>& files, const json& load_options, json* report);

// Loads tensors from safetensors files into the model's parameters and buffers by name.
// options: {renames: {fileKey: modelKey}, partial: bool (missing keys allowed), allowUnexpected: [regex],
//           reshapeSingletons: bool (accept [C,C,1,1] for [C,C] and back), prefix: "strip this prefix",
//           map: bool (default true: CPU parameters of the file's dtype become views of the mapped file)}
// Returns a report {loaded, missing, unexpected, mismatched, ignored, files, mappedBytes, copiedBytes}. Throws a named error when
// keys are missing (unless partial), mis-shaped, or unexpected (unless allowed).
json load_weights(Model& model, const std::vector<std::string>& files, const json& options);

// Looks up `name` among parameters and buffers.
at::Tensor* find_tensor(torch::nn::Module& m, const std::string& name);

}  // namespace rt
