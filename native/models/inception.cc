// FID InceptionV3 (torch-fidelity 0.4.0 FeatureExtractorInceptionV3 = pytorch-fid's FID Inception blocks),
// registered as kind "inception". Weight names are those of pt_inception-2015-12-05 /
// weights-inception-2015-12-05 (472 tensors; the BatchNorm num_batches_tracked buffers are not needed).
//
// Method "forward": {images uint8 [B, 3, H, W]} -> feature.64 / .192 / .768 / .2048 (pool3, the FID
// feature) / .logits_unbiased (the IS input) / .logits. Options: resized, normalized (bool) add the 299×299
// float input before/after (x−128)/128; block_means (bool) adds block_mean.<stage> [B, C] for the 18
// top-level stages; blocks ([names]) adds the full output block.<stage>.
// Method "set_tensors": copies named tensors into the weights (formula weights from TypeScript).
#include <cmath>

#include "nn/encoder_util.h"

namespace rt {
namespace {

constexpr double kBnEps = 0.001;  // the TF graph's BatchNorm epsilon
constexpr int64_t kSize = 299;

// conv (no bias) -> BatchNorm (eval, running statistics, eps 0.001) -> ReLU
struct BasicConv2d : torch::nn::Module {
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
  BasicConv2d(int64_t in, int64_t out, std::vector<int64_t> k, std::vector<int64_t> stride = {1, 1}, std::vector<int64_t> pad = {0, 0}) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, torch::ExpandingArray<2>(k))
                                                         .stride(torch::ExpandingArray<2>(stride))
                                                         .padding(torch::ExpandingArray<2>(pad))
                                                         .bias(false)));
    bn = register_module("bn", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(out).eps(kBnEps)));
  }
  // x: [B, in, H, W] -> [B, out, H', W']. Always the eval form: FID features never use batch statistics.
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = conv(x);
    y = at::batch_norm(y, bn->weight, bn->bias, bn->running_mean, bn->running_var, false, 0.0, kBnEps, true);
    return at::relu_(y);
  }
};
using Conv = std::shared_ptr<BasicConv2d>;

at::Tensor avg_pool_3x3(const at::Tensor& x) { return at::avg_pool2d(x, {3, 3}, {1, 1}, {1, 1}, false, /*count_include_pad=*/false); }
at::Tensor max_pool_3x3_s2(const at::Tensor& x) { return at::max_pool2d(x, {3, 3}, {2, 2}); }

struct Block : torch::nn::Module {
  Conv add(const std::string& name, int64_t in, int64_t out, std::vector<int64_t> k, std::vector<int64_t> stride = {1, 1},
           std::vector<int64_t> pad = {0, 0}) {
    return register_module(name, std::make_shared<BasicConv2d>(in, out, k, stride, pad));
  }
  virtual at::Tensor forward(const at::Tensor& x) = 0;
};

// 35×35 blocks (Mixed_5b/5c/5d): cat[1x1, 5x5, 3x3dbl, pool]
struct InceptionA : Block {
  Conv b1, b5_1, b5_2, d1, d2, d3, pool;
  InceptionA(int64_t in, int64_t pool_features) {
    b1 = add("branch1x1", in, 64, {1, 1});
    b5_1 = add("branch5x5_1", in, 48, {1, 1});
    b5_2 = add("branch5x5_2", 48, 64, {5, 5}, {1, 1}, {2, 2});
    d1 = add("branch3x3dbl_1", in, 64, {1, 1});
    d2 = add("branch3x3dbl_2", 64, 96, {3, 3}, {1, 1}, {1, 1});
    d3 = add("branch3x3dbl_3", 96, 96, {3, 3}, {1, 1}, {1, 1});
    pool = add("branch_pool", in, pool_features, {1, 1});
  }
  at::Tensor forward(const at::Tensor& x) override {
    return at::cat({b1->forward(x), b5_2->forward(b5_1->forward(x)), d3->forward(d2->forward(d1->forward(x))),
                    pool->forward(avg_pool_3x3(x))}, 1);
  }
};

// Grid reduction 35 -> 17 (Mixed_6a): cat[3x3, 3x3dbl, pool]
struct InceptionB : Block {
  Conv b3, d1, d2, d3;
  explicit InceptionB(int64_t in) {
    b3 = add("branch3x3", in, 384, {3, 3}, {2, 2});
    d1 = add("branch3x3dbl_1", in, 64, {1, 1});
    d2 = add("branch3x3dbl_2", 64, 96, {3, 3}, {1, 1}, {1, 1});
    d3 = add("branch3x3dbl_3", 96, 96, {3, 3}, {2, 2});
  }
  at::Tensor forward(const at::Tensor& x) override {
    return at::cat({b3->forward(x), d3->forward(d2->forward(d1->forward(x))), max_pool_3x3_s2(x)}, 1);
  }
};

// 17×17 blocks (Mixed_6b..6e): cat[1x1, 7x7, 7x7dbl, pool]
struct InceptionC : Block {
  Conv b1, s1, s2, s3, d1, d2, d3, d4, d5, pool;
  InceptionC(int64_t in, int64_t c7) {
    b1 = add("branch1x1", in, 192, {1, 1});
    s1 = add("branch7x7_1", in, c7, {1, 1});
    s2 = add("branch7x7_2", c7, c7, {1, 7}, {1, 1}, {0, 3});
    s3 = add("branch7x7_3", c7, 192, {7, 1}, {1, 1}, {3, 0});
    d1 = add("branch7x7dbl_1", in, c7, {1, 1});
    d2 = add("branch7x7dbl_2", c7, c7, {7, 1}, {1, 1}, {3, 0});
    d3 = add("branch7x7dbl_3", c7, c7, {1, 7}, {1, 1}, {0, 3});
    d4 = add("branch7x7dbl_4", c7, c7, {7, 1}, {1, 1}, {3, 0});
    d5 = add("branch7x7dbl_5", c7, 192, {1, 7}, {1, 1}, {0, 3});
    pool = add("branch_pool", in, 192, {1, 1});
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor d = d5->forward(d4->forward(d3->forward(d2->forward(d1->forward(x)))));
    return at::cat({b1->forward(x), s3->forward(s2->forward(s1->forward(x))), d, pool->forward(avg_pool_3x3(x))}, 1);
  }
};

// Grid reduction 17 -> 8 (Mixed_7a): cat[3x3, 7x7x3, pool]
struct InceptionD : Block {
  Conv a1, a2, s1, s2, s3, s4;
  explicit InceptionD(int64_t in) {
    a1 = add("branch3x3_1", in, 192, {1, 1});
    a2 = add("branch3x3_2", 192, 320, {3, 3}, {2, 2});
    s1 = add("branch7x7x3_1", in, 192, {1, 1});
    s2 = add("branch7x7x3_2", 192, 192, {1, 7}, {1, 1}, {0, 3});
    s3 = add("branch7x7x3_3", 192, 192, {7, 1}, {1, 1}, {3, 0});
    s4 = add("branch7x7x3_4", 192, 192, {3, 3}, {2, 2});
  }
  at::Tensor forward(const at::Tensor& x) override {
    return at::cat({a2->forward(a1->forward(x)), s4->forward(s3->forward(s2->forward(s1->forward(x)))), max_pool_3x3_s2(x)}, 1);
  }
};

// 8×8 blocks: cat[1x1, 3x3_2a, 3x3_2b, 3x3dbl_3a, 3x3dbl_3b, pool]. Mixed_7b's branch pool averages
// (count_include_pad=False); Mixed_7c's is a MAX pool, a quirk of the TF graph FID was defined with.
struct InceptionE : Block {
  Conv b1, t1, t2a, t2b, d1, d2, d3a, d3b, pool;
  bool max_pool;
  InceptionE(int64_t in, bool max_pool) : max_pool(max_pool) {
    b1 = add("branch1x1", in, 320, {1, 1});
    t1 = add("branch3x3_1", in, 384, {1, 1});
    t2a = add("branch3x3_2a", 384, 384, {1, 3}, {1, 1}, {0, 1});
    t2b = add("branch3x3_2b", 384, 384, {3, 1}, {1, 1}, {1, 0});
    d1 = add("branch3x3dbl_1", in, 448, {1, 1});
    d2 = add("branch3x3dbl_2", 448, 384, {3, 3}, {1, 1}, {1, 1});
    d3a = add("branch3x3dbl_3a", 384, 384, {1, 3}, {1, 1}, {0, 1});
    d3b = add("branch3x3dbl_3b", 384, 384, {3, 1}, {1, 1}, {1, 0});
    pool = add("branch_pool", in, 192, {1, 1});
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor t = t1->forward(x), d = d2->forward(d1->forward(x));
    at::Tensor p = max_pool ? at::max_pool2d(x, {3, 3}, {1, 1}, {1, 1}) : avg_pool_3x3(x);
    return at::cat({b1->forward(x), t2a->forward(t), t2b->forward(t), d3a->forward(d), d3b->forward(d), pool->forward(p)}, 1);
  }
};

// TF1 bilinear resize (no half-pixel centres, no antialiasing) of a float image batch to 299×299, in
// float32 exactly as the reference: per axis scale = float32(in/out), src = float32(o)·scale, lo = trunc,
// hi = min(lo+1, in−1), d = src − lo; width first, then height. Every product goes through a volatile
// float so the compiler cannot fuse it into an FMA (which would change the last bit).
at::Tensor tf1_resize(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (H == kSize && W == kSize) return x.clone();
  struct Tap {
    int64_t lo, hi;
    float d;
  };
  auto taps = [](int64_t in) {
    std::vector<Tap> t(kSize);
    const float scale = static_cast<float>(static_cast<double>(in) / static_cast<double>(kSize));
    for (int64_t o = 0; o < kSize; ++o) {
      volatile float src = static_cast<float>(o) * scale;
      const int64_t lo = static_cast<int64_t>(std::trunc(static_cast<float>(src)));
      t[o] = {lo, std::min<int64_t>(lo + 1, in - 1), static_cast<float>(src) - static_cast<float>(lo)};
    }
    return t;
  };
  const std::vector<Tap> ty = taps(H), tx = taps(W);
  at::Tensor out = at::empty({B, C, kSize, kSize}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t p = 0; p < B * C; ++p) {
    const float* plane = src + p * H * W;
    float* o = dst + p * kSize * kSize;
    for (int64_t oy = 0; oy < kSize; ++oy) {
      const float* r0 = plane + ty[oy].lo * W;
      const float* r1 = plane + ty[oy].hi * W;
      const float dy = ty[oy].d;
      for (int64_t ox = 0; ox < kSize; ++ox) {
        const Tap& t = tx[ox];
        const float a = r0[t.lo], b = r0[t.hi], c = r1[t.lo], e = r1[t.hi];
        volatile float pt = (b - a) * t.d;
        const float top = a + pt;
        volatile float pb = (e - c) * t.d;
        const float bottom = c + pb;
        volatile float pv = (bottom - top) * dy;
        o[oy * kSize + ox] = top + pv;
      }
    }
  }
  return out;
}

struct InceptionModel : Model {
  Conv Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3;
  std::vector<std::pair<std::string, std::shared_ptr<Block>>> mixed;
  torch::nn::Linear fc{nullptr};

  explicit InceptionModel(const json& config) {
    const int64_t classes = enc::cfg_positive(config, "num_classes", 1008, "inception config");
    auto conv = [&](const char* name, int64_t in, int64_t out, std::vector<int64_t> k, std::vector<int64_t> s = {1, 1},
                    std::vector<int64_t> p = {0, 0}) { return register_module(name, std::make_shared<BasicConv2d>(in, out, k, s, p)); };
    Conv2d_1a_3x3 = conv("Conv2d_1a_3x3", 3, 32, {3, 3}, {2, 2});
    Conv2d_2a_3x3 = conv("Conv2d_2a_3x3", 32, 32, {3, 3});
    Conv2d_2b_3x3 = conv("Conv2d_2b_3x3", 32, 64, {3, 3}, {1, 1}, {1, 1});
    Conv2d_3b_1x1 = conv("Conv2d_3b_1x1", 64, 80, {1, 1});
    Conv2d_4a_3x3 = conv("Conv2d_4a_3x3", 80, 192, {3, 3});
    auto block = [&](const char* name, std::shared_ptr<Block> b) { mixed.emplace_back(name, register_module(name, b)); };
    block("Mixed_5b", std::make_shared<InceptionA>(192, 32));
    block("Mixed_5c", std::make_shared<InceptionA>(256, 64));
    block("Mixed_5d", std::make_shared<InceptionA>(288, 64));
    block("Mixed_6a", std::make_shared<InceptionB>(288));
    block("Mixed_6b", std::make_shared<InceptionC>(768, 128));
    block("Mixed_6c", std::make_shared<InceptionC>(768, 160));
    block("Mixed_6d", std::make_shared<InceptionC>(768, 160));
    block("Mixed_6e", std::make_shared<InceptionC>(768, 192));
    block("Mixed_7a", std::make_shared<InceptionD>(768));
    block("Mixed_7b", std::make_shared<InceptionE>(1280, false));
    block("Mixed_7c", std::make_shared<InceptionE>(2048, true));
    fc = register_module("fc", enc::linear(2048, classes));
  }

  bool ignorable_key(const std::string& key) const override {
    // Not in the published file (a plain dict) and unused in eval mode.
    static const std::string suffix = ".num_batches_tracked";
    return key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0;
  }

  TensorMap forward(const TensorMap& in, const json& options) {
    at::NoGradGuard no_grad;  // pure feature extraction
    at::Tensor img = need(in, "images", "inception.forward");
    if (img.scalar_type() != at::kByte) throw Error("inception.forward: images must be uint8 [B, 3, H, W], got " + dtype_name(img.scalar_type()));
    if (img.dim() != 4 || img.size(1) != 3 || img.size(2) < 1 || img.size(3) < 1)
      throw Error("inception.forward: images must be uint8 [B, 3, H, W], got " + shape_str(img.sizes()));
    const bool want_block_means = opt<bool>(options, "block_means", false);
    std::set<std::string> want_blocks;
    if (options.is_object() && options.contains("blocks")) {
      if (!options["blocks"].is_array()) throw Error("inception.forward: option 'blocks' must be an array of stage names");
      for (auto& b : options["blocks"]) want_blocks.insert(b.get<std::string>());
    }
    TensorMap out;
    // The resize is a scalar CPU kernel; the network runs on the model's device.
    at::Tensor resized = tf1_resize(img.to(at::kCPU).to(at::kFloat).contiguous());
    if (opt<bool>(options, "resized", false)) out["resized"] = resized;
    at::Tensor x = ((resized - 128.0) / 128.0).to(device(), fc->weight.scalar_type());
    if (opt<bool>(options, "normalized", false)) out["normalized"] = x;
    auto stage = [&](const std::string& name, const at::Tensor& y) {
      if (want_block_means) out["block_mean." + name] = y.to(at::kDouble).mean({2, 3}).to(y.scalar_type());
      if (want_blocks.count(name)) {
        out["block." + name] = y;
        want_blocks.erase(name);
      }
      return y;
    };
    auto spatial_mean = [](const at::Tensor& y) { return y.mean({2, 3}); };
    x = stage("Conv2d_1a_3x3", Conv2d_1a_3x3->forward(x));
    x = stage("Conv2d_2a_3x3", Conv2d_2a_3x3->forward(x));
    x = stage("Conv2d_2b_3x3", Conv2d_2b_3x3->forward(x));
    x = stage("MaxPool_1", max_pool_3x3_s2(x));
    out["feature.64"] = spatial_mean(x);
    x = stage("Conv2d_3b_1x1", Conv2d_3b_1x1->forward(x));
    x = stage("Conv2d_4a_3x3", Conv2d_4a_3x3->forward(x));
    x = stage("MaxPool_2", max_pool_3x3_s2(x));
    out["feature.192"] = spatial_mean(x);
    for (auto& [name, b] : mixed) {
      x = stage(name, b->forward(x));
      if (name == "Mixed_6e") out["feature.768"] = spatial_mean(x);
    }
    if (!want_blocks.empty()) throw Error("inception.forward: option 'blocks' names an unknown stage '" + *want_blocks.begin() + "'");
    at::Tensor f = spatial_mean(x);  // [B, 2048] pool3
    out["feature.2048"] = f;
    at::Tensor unbiased = at::matmul(f, fc->weight.t());
    out["feature.logits_unbiased"] = unbiased;
    out["feature.logits"] = unbiased + fc->bias;
    return out;
  }

  TensorMap call(const std::string& method, const TensorMap& in, const json& options) override {
    if (method == "forward" || method == "features") return forward(in, options);
    if (method == "set_tensors") return enc::set_tensors(*this, in);
    throw Error("inception: unknown method '" + method + "' (known: forward, set_tensors)");
  }
};

const bool registered = register_model("inception", [](const json& config, const json&) { return std::make_shared<InceptionModel>(config); });

}  // namespace
}  // namespace rt
