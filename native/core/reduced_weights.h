// Frozen weights held in bf16/fp16 on CPU: an approximation the user opts into (`setFrozenDtype`,
// `--frozen-dtype`), which halves the memory of the weights that do not train.
//
// What is held: every frozen floating parameter with >= 2 dims (matrices, convolution kernels, embeddings), i.e.
// nearly all of a model's bytes; 1-D tensors (biases, norm scales) and trained tensors stay fp32. What is
// computed: fp32. linear, addmm, conv2d, embedding and matmul meeting a reduced-precision weight and an fp32 input
// up-cast the weight for that one op (the fp32 copy is freed right after; libtorch 1.13's CPU kernels have no
// mixed-dtype path), so the only error is the weights' rounding (bf16: 8 significant bits, fp16: 11). Their
// backward up-casts again instead of keeping the fp32 copy, so training does not hold the copies either.
//
// The up-cast is a kernel on the DeferredInit dispatch key (the addon's own hook key, see core/model.cc), which
// every native worker thread includes once any model holds reduced weights.
#pragma once
#include <torch/version.h>

#include "core/model.h"

namespace rt {

// Converts `model`'s frozen floating parameters with >= 2 dims to `dtype` (kBFloat16 or kHalf); mapped file
// pages they leave are handed back. Returns {tensors, bytesBefore, bytesAfter, dtype}.
json hold_frozen_in(Model& model, at::ScalarType dtype);

// Includes the up-cast hook on the calling thread when any model holds reduced weights (cheap; once per thread).
void apply_reduced_weight_hook();

// The dtype a model computes in, given one of its weights: on CPU always fp32 (a bf16/fp16 weight there is a held
// frozen one, up-cast per op), elsewhere the weight's own dtype (a CUDA model moved to half precision).
inline at::ScalarType compute_dtype(const at::Tensor& weight) {
  const auto t = weight.scalar_type();
  return weight.device().is_cpu() && (t == at::kBFloat16 || t == at::kHalf) ? at::kFloat : t;
}

}  // namespace rt
