// The generation core shared by the captioners (BLIP's BERT decoder with cross-attention, blip_generate.cc;
// BLIP-2's OPT decoder behind the query prefix, blip2_generate.cc): option parsing and checks, the logits
// processors and warpers, greedy search / sampling, and beam search, over a small decoder interface that
// runs one step with its KV cache. What differs between the families is data (`Rules`): special ids, how
// lengths are counted, how sampling draws and which transformers version's beam search is reproduced.
#pragma once
#include "core/model.h"

namespace rt::gen {

// How a sampling step draws its token.
enum class Draw {
  // transformers' draw: one multinomial over the whole vocabulary in token order (BLIP-2; the same
  // token as PyTorch for a seed).
  vocabulary,
  // Over the top-k / top-p candidates only, sorted ascending: the same distribution without a full-vocabulary
  // sort, not the same draw for a seed (BLIP).
  candidates,
};

// Which transformers beam search is reproduced.
enum class Beam {
  // 4.57's vectorised `_beam_search`: top 2·num_beams candidates, finished hypotheses kept by
  // length-normalised score with the early-stop heuristic, finished outputs filled with "pad or EOS" (BLIP).
  vectorised,
  // 4.37.2's BeamSearchScorer: EOS candidates ranked below num_beams skipped, `is_done` heuristics,
  // finalize appending EOS and padding with pad; only the 2·num_beams best candidates per image move to
  // the host, once per step (BLIP-2).
  scorer,
};

// A family's generation rules.
struct Rules {
  int64_t eos = 2, pad = 1, bos = 2;  // defaults of the special ids (from the model's config)
  // BLIP-2: the tracked sequence starts as one [BOS] that is never fed to the model; max_length counts it
  // (so max_length >= 2, max_new_tokens n is max_length n+1, min_new_tokens counts after it).
  // BLIP: the start tokens are fed and counted; max_new_tokens / min_new_tokens are refused by name.
  bool dummy_bos = false;
  Draw draw = Draw::vocabulary;
  Beam beam = Beam::scorer;
};

struct Options {
  int64_t max_length = 20, min_length = 0, min_new_tokens = 0, num_beams = 1, num_return = 1, top_k = 50;
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0, length_penalty = 1.0;
  bool do_sample = false;
  std::string early_stopping = "false";  // "false" | "true" | "never"
  uint64_t seed = 0;
  bool has_seed = false;
  int64_t eos = 2, pad = 1, bos = 2;
  Rules rules;
};

// Options of a generate() call over `defaults` (BLIP-2: the language model's text_config, as 4.37.2 builds its
// generation config; BLIP: none). Every setting transformers' generate() could hold that these loops do not
// implement is refused by name.
Options parse_options(const json& options, const json& defaults, const Rules& rules);
// EOS, pad and BOS must be token ids of a vocabulary of `vocab`.
void check_special_ids(const Options& g, int64_t vocab, const std::string& where);

// What the loops need from a decoder: one step over the pending input with the KV cache.
struct Decoder {
  virtual ~Decoder() = default;
  // Starts a run over `repeat` copies of each image's start inputs (sampled sequences or beams); the start
  // inputs are the first step's pending input.
  virtual void start(int64_t repeat) = 0;
  // Runs the pending input with mask2d [R, past+T] (1 = attend) and keeps its keys/values:
  // next-token logits [R, V], float32.
  virtual at::Tensor step(const at::Tensor& mask2d) = 0;
  // tokens [R]: the next step's pending input.
  virtual void feed(const at::Tensor& tokens) = 0;
  // Keeps cache rows `rows` [R] (beam reordering).
  virtual void reorder(const at::Tensor& rows) = 0;
};

// Greedy search, sampling or beam search as `g` says. ids: [B, L0] the sequence generate() tracks (BLIP: the
// start tokens; BLIP-2: the dummy [BOS]); mask: [B, M] the start inputs' mask.
// -> {sequences [B·K, L], token_logprobs [B·K, L-L0] (greedy/sampling) | sequences_scores [B·K] (beam)}
TensorMap run(Decoder& dec, const at::Tensor& ids, const at::Tensor& mask, const Options& g);

// Captioning loss: position t predicts token t+1, CE(logits[:, :-1], labels[:, 1:]) on float32 logits, mean over
// the targets that are not -100, with label smoothing. logits: [B, T, V], labels: [B, T] -> []
at::Tensor shifted_caption_loss(const at::Tensor& logits, const at::Tensor& labels, double smoothing);

// Captioner inputs shared by the families' methods.
// `name` [B, T] integer ids on `device` as int64.
at::Tensor ids_input(const TensorMap& in, const std::string& name, const std::string& where, const at::Device& device);
// `attention_mask` [B, T] matching ids, on ids' device in its own dtype; ones (ids' dtype) when absent.
at::Tensor mask_input(const TensorMap& in, const at::Tensor& ids, const std::string& where);

}  // namespace rt::gen
