#include "core/model.h"

#include <torch/library.h>

#include <chrono>
#include <regex>

#include "core/memory.h"

namespace rt {

at::Device Model::device() const {
  for (auto& p : parameters()) return p.device();
  return at::Device(at::kCPU);
}

namespace {
std::map<std::string, ModelFactory>& registry() {
  static std::map<std::string, ModelFactory> r;
  return r;
}
std::string list_names(const std::vector<std::string>& names, size_t max = 12) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < max; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > max) out += ", ... (" + std::to_string(names.size() - max) + " more)";
  return out;
}
}  // namespace

// ------------------------------------------------------------------ construction without initialisation
// A model about to receive every parameter from a file need not draw random initial values (SD v1.4's UNet: 860 M
// serial RNG draws and 3.4 GB of first-touch page faults, ~4 s). While a SkipParameterInit guard is active, the
// init fills that torch::nn modules run (uniform_, normal_, fill_, zero_) are skipped for tensors that require
// grad — i.e. parameters, which register before they are filled; buffers and temporaries fill as usual. The
// DeferredInit dispatch key is libtorch's out-of-tree hook for exactly this (torchdistx's deferred init).
namespace {
// The DeferredInit key is also the hook of core/reduced_weights.cc (included on worker threads whenever a model holds
// reduced weights), so skipping is tied to the guard below, not to the key alone.
thread_local bool t_skip_init = false;
bool skip(const at::Tensor& self) { return t_skip_init && self.requires_grad(); }

at::Tensor& init_uniform(at::Tensor& self, double from, double to, c10::optional<at::Generator> gen) {
  if (skip(self)) return self;
  c10::impl::ExcludeDispatchKeyGuard below(c10::DispatchKey::DeferredInit);
  return self.uniform_(from, to, gen);
}
at::Tensor& init_normal(at::Tensor& self, double mean, double std, c10::optional<at::Generator> gen) {
  if (skip(self)) return self;
  c10::impl::ExcludeDispatchKeyGuard below(c10::DispatchKey::DeferredInit);
  return self.normal_(mean, std, gen);
}
at::Tensor& init_fill(at::Tensor& self, const at::Scalar& value) {
  if (skip(self)) return self;
  c10::impl::ExcludeDispatchKeyGuard below(c10::DispatchKey::DeferredInit);
  return self.fill_(value);
}
at::Tensor& init_zero(at::Tensor& self) {
  if (skip(self)) return self;
  c10::impl::ExcludeDispatchKeyGuard below(c10::DispatchKey::DeferredInit);
  return self.zero_();
}
}  // namespace

TORCH_LIBRARY_IMPL(_, DeferredInit, m) { m.fallback(torch::CppFunction::makeFallthrough()); }
TORCH_LIBRARY_IMPL(aten, DeferredInit, m) {
  m.impl("uniform_", TORCH_FN(init_uniform));
  m.impl("normal_", TORCH_FN(init_normal));
  m.impl("fill_.Scalar", TORCH_FN(init_fill));
  m.impl("zero_", TORCH_FN(init_zero));
}

struct SkipParameterInit {
  c10::impl::IncludeDispatchKeyGuard include{c10::DispatchKey::DeferredInit};
  bool previous = t_skip_init;
  SkipParameterInit() { t_skip_init = true; }
  ~SkipParameterInit() { t_skip_init = previous; }
};

bool register_model(const std::string& kind, ModelFactory factory) {
  registry()[kind] = std::move(factory);
  return true;
}

std::shared_ptr<Model> create_model(const std::string& kind, const json& config, const json& options) {
  auto it = registry().find(kind);
  if (it == registry().end()) {
    std::vector<std::string> kinds = model_kinds();
    throw Error("unknown model kind '" + kind + "' (known: " + list_names(kinds, 100) + ")");
  }
  return it->second(config, options);
}

std::map<std::string, ModelFactory>& components() {
  static std::map<std::string, ModelFactory> r;
  return r;
}

bool register_component(const std::string& name, ModelFactory factory) {
  components()[name] = std::move(factory);
  return true;
}

std::shared_ptr<Model> create_component(const std::string& name, const json& config, const json& options) {
  auto it = components().find(name);
  if (it == components().end()) throw Error("no native component '" + name + "' in this build");
  return it->second(config, options);
}

std::shared_ptr<Model> create_model_from_files(const std::string& kind, const json& config, const json& options,
                                              const std::vector<std::string>& files, const json& load_options, json* report) {
  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<Model> model;
  {
    SkipParameterInit no_init;
    model = create_model(kind, config, options);
  }
  const auto t1 = std::chrono::steady_clock::now();
  json lo = load_options.is_object() ? load_options : json::object();
  lo["partial"] = false;
  lo["requireAll"] = true;  // parameters were never filled: every one must come from the files
  json r = load_weights(*model, files, lo);
  // The unfilled blocks the mapped weights replaced were never touched; hand them back rather than cache them.
  release_cached_memory();
  const auto t2 = std::chrono::steady_clock::now();
  r["constructMs"] = std::chrono::duration<double, std::milli>(t1 - t0).count();
  r["loadMs"] = std::chrono::duration<double, std::milli>(t2 - t1).count();
  if (report) *report = r;
  return model;
}

std::vector<std::string> model_kinds() {
  std::vector<std::string> out;
  for (auto& [k, _] : registry()) out.push_back(k);
  return out;
}

at::Tensor* find_tensor(torch::nn::Module& m, const std::string& name) {
  // named_parameters() builds a fresh dict; callers loading many keys use the map in load_weights.
  for (auto& item : m.named_parameters(true))
    if (item.key() == name) return &item.value();
  for (auto& item : m.named_buffers(true))
    if (item.key() == name) return &item.value();
  return nullptr;
}

json load_weights(Model& model, const std::vector<std::string>& files, const json& options) {
  const bool require_all = opt<bool>(options, "requireAll", false);
  const bool partial = opt<bool>(options, "partial", false) && !require_all;
  const bool map = opt<bool>(options, "map", true);
  const bool reshape_singletons = opt<bool>(options, "reshapeSingletons", false);
  const std::string prefix = opt<std::string>(options, "prefix", "");
  std::map<std::string, std::string> renames;
  if (options.contains("renames") && options["renames"].is_object())
    for (auto it = options["renames"].begin(); it != options["renames"].end(); ++it) renames[it.key()] = it.value().get<std::string>();
  std::vector<std::regex> allow_unexpected;
  if (options.contains("allowUnexpected") && options["allowUnexpected"].is_array())
    for (auto& r : options["allowUnexpected"]) allow_unexpected.emplace_back(r.get<std::string>());

  std::map<std::string, at::Tensor> targets;  // model name -> parameter or buffer (shares storage)
  for (auto& item : model.named_parameters(true)) targets[item.key()] = item.value();
  for (auto& item : model.named_buffers(true)) targets[item.key()] = item.value();
  std::set<std::string> tied;
  for (auto& k : model.tied_keys()) tied.insert(k);

  std::set<std::string> loaded;
  std::map<std::string, std::string> loaded_from;  // model key -> the file key that filled it
  std::vector<std::string> unexpected, ignored;
  json mismatched = json::array();
  int64_t mapped_bytes = 0, copied_bytes = 0;
  at::NoGradGuard no_grad;
  for (const auto& path : files) {
    auto file = SafetensorsFile::open(path);
    if (map) file->prefetch();
    for (const auto& e : file->entries()) {
      std::string key = e.name;
      if (!prefix.empty()) {
        if (key.rfind(prefix, 0) != 0) {
          ignored.push_back(e.name);
          continue;
        }
        key = key.substr(prefix.size());
      }
      auto rn = renames.find(key);
      if (rn != renames.end()) key = rn->second;
      key = model.canonical_key(key);
      auto t = targets.find(key);
      if (t == targets.end()) {
        if (model.ignorable_key(key)) {
          ignored.push_back(e.name);
          continue;
        }
        bool allowed = false;
        for (auto& r : allow_unexpected) allowed = allowed || std::regex_search(e.name, r);
        (allowed ? ignored : unexpected).push_back(e.name);
        continue;
      }
      at::Tensor src = file->tensor(e.name);
      at::Tensor& dst = t->second;
      if (src.sizes() != dst.sizes()) {
        bool ok = false;
        if (reshape_singletons && src.numel() == dst.numel()) {
          // 1x1 conv [C, C, 1, 1] <-> linear [C, C]: equal after dropping trailing singleton dims.
          auto strip = [](at::IntArrayRef s) {
            std::vector<int64_t> v(s.begin(), s.end());
            while (v.size() > 1 && v.back() == 1) v.pop_back();
            return v;
          };
          ok = strip(src.sizes()) == strip(dst.sizes());
          if (ok) src = src.reshape(dst.sizes());
        }
        if (!ok) {
          mismatched.push_back({{"name", e.name}, {"file", path}, {"expected", dst.sizes().vec()}, {"got", src.sizes().vec()}});
          continue;
        }
      }
      auto first = loaded_from.find(key);
      if (first != loaded_from.end()) {
        // A second published copy of one parameter (a tied LM head stored beside its embedding): equal
        // copies are fine, differing ones would make the model depend on file order.
        if (!at::equal(dst, src.to(dst.device(), dst.scalar_type())))
          throw Error("weights: '" + e.name + "' and '" + first->second + "' are tied (one parameter '" + key + "') but hold different values");
        continue;
      }
      // The parameter *is* the file's bytes when it can be (CPU, same dtype, a view of the private mapping):
      // no copy, and a write (a trained tensor) copies only the pages it touches, never into the file.
      if (map && dst.device().is_cpu() && dst.scalar_type() == src.scalar_type() && dst.is_contiguous() && file->is_mapped(src)) {
        dst.set_data(src);
        mapped_bytes += src.nbytes();
      } else {
        dst.copy_(src);
        copied_bytes += src.nbytes();
      }
      loaded.insert(key);
      loaded_from[key] = e.name;
    }
  }
  std::vector<std::string> missing;
  for (auto& [name, _] : targets)
    if (!loaded.count(name) && !tied.count(name) && !model.ignorable_key(name)) missing.push_back(name);
  model.tie_weights();

  const std::string where = files.size() == 1 ? "'" + files[0] + "'" : std::to_string(files.size()) + " weight files";
  if (!mismatched.empty()) {
    std::string msg;
    for (size_t i = 0; i < mismatched.size() && i < 8; ++i) {
      auto& m = mismatched[i];
      msg += (i ? "; " : "") + m["name"].get<std::string>() + " is " + shape_str(m["got"].get<std::vector<int64_t>>()) +
             ", the model expects " + shape_str(m["expected"].get<std::vector<int64_t>>());
    }
    throw Error("weights in " + where + " do not fit the model config: " + msg);
  }
  if (require_all) {
    // Tied parameters are re-pointed by tie_weights(); any other unloaded one would hold unfilled memory.
    if (!missing.empty())
      throw Error("weights in " + where + " lack " + std::to_string(missing.size()) + " tensor(s) the model needs: " + list_names(missing));
  }
  if (!missing.empty() && !partial)
    throw Error("weights in " + where + " lack " + std::to_string(missing.size()) + " tensor(s) the model needs: " + list_names(missing));
  if (!unexpected.empty())
    throw Error("weights in " + where + " hold " + std::to_string(unexpected.size()) +
                " tensor(s) the model does not have: " + list_names(unexpected));
  return {{"loaded", loaded.size()}, {"missing", missing},         {"unexpected", unexpected},    {"ignored", ignored},
          {"files", files},          {"mappedBytes", mapped_bytes}, {"copiedBytes", copied_bytes}};
}

}  // namespace rt
