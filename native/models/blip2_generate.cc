// BLIP-2 OPT generation, reproducing transformers 4.37.2 (Blip2ForConditionalGeneration.generate ->
// OPTForCausalLM.generate(inputs_embeds=...)) on the shared generation core (generation.{h,cc}); this file
// holds BLIP-2's rules and its decoder step:
//  - the LM input is [projected queries | embed_tokens(prompt or [BOS])], mask [ones(Q) | prompt mask];
//    the prompt is used as given (nothing dropped, unlike BLIP);
//  - the sequence generate() tracks starts as a dummy [BOS] that is never fed to the model, so outputs are
//    [BOS] + generated tokens and max_length / min_length count that one token (max_new_tokens=n gives
//    max_length n+1; gen::Rules::dummy_bos);
//  - generation defaults come from text_config (the language model's generation config);
//  - greedy / sampling: repetition penalty -> min length -> min new tokens, then temperature -> top-k ->
//    top-p, drawn over the whole vocabulary (gen::Draw::vocabulary); finished rows get pad;
//  - beam search: 4.37's BeamSearchScorer (gen::Beam::scorer).
// The OPT decoder keeps its self-attention KV cache.
#include "models/blip2.h"
#include "models/generation.h"

namespace rt::blip2 {
namespace {

// The OPT decoder as the generation core steps it: the start embeddings first, then embedded tokens.
struct Decoder : gen::Decoder {
  Blip2Model& model;
  at::Tensor embeds;  // [projected queries | embed_tokens(prompt or BOS)]: [B, Q+P, H]
  OptCache cache;
  at::Tensor pending;  // embeddings the next step feeds [R, T, H]
  Decoder(Blip2Model& m, at::Tensor e) : model(m), embeds(std::move(e)) {}
  OptDecoderImpl& dec() { return *model.language_model->model->decoder; }
  void start(int64_t repeat) override {
    cache = dec().start_cache();
    pending = repeat > 1 ? embeds.repeat_interleave(repeat, 0) : embeds;
  }
  // mask2d: [R, past+T] -> [R, V]
  at::Tensor step(const at::Tensor& mask2d) override {
    at::Tensor h = dec().forward(pending, mask2d, cache, /*keep=*/true);
    return model.language_model->logits(h.select(1, h.size(1) - 1)).to(at::kFloat);
  }
  void feed(const at::Tensor& tokens) override { pending = dec().embed(tokens.unsqueeze(1)).to(pending.scalar_type()); }
  void reorder(const at::Tensor& rows) override { cache.reorder(rows); }
};

}  // namespace

TensorMap generate(Blip2Model& model, const TensorMap& in, const json& options) {
  at::NoGradGuard no_grad;  // pure inference
  const gen::Rules rules{model.tcfg.eos, model.tcfg.pad, model.tcfg.bos, /*dummy_bos=*/true, gen::Draw::vocabulary, gen::Beam::scorer};
  const gen::Options g = gen::parse_options(options, model.text_json, rules);
  gen::check_special_ids(g, model.tcfg.vocab, "blip2.generate");
  at::Tensor lang = model.query_outputs(model.image_embeds(in, "blip2.generate")).second;
  const int64_t B = lang.size(0);
  // [projected queries | embed_tokens(prompt or BOS)] and [ones(Q) | prompt mask].
  auto lopts = at::TensorOptions().device(model.device()).dtype(at::kLong);
  at::Tensor ids, mask;
  if (in.find("input_ids") == in.end()) {
    ids = at::full({B, 1}, g.bos, lopts);
    mask = at::ones_like(ids);
  } else {
    ids = model.ids_input(in, "input_ids", "blip2.generate");
    if (ids.size(1) < 1) throw Error("blip2.generate: input_ids (the prompt) is empty");
    if (ids.size(0) != B && ids.size(0) != 1)
      throw Error("blip2.generate: input_ids has " + std::to_string(ids.size(0)) + " rows for " + std::to_string(B) + " images");
    mask = gen::mask_input(in, ids, "blip2.generate").to(at::kLong);
    ids = ids.expand({B, -1}).contiguous();
    mask = mask.expand({B, -1}).contiguous();
  }
  at::Tensor embeds = at::cat({lang, model.language_model->model->decoder->embed(ids).to(lang.scalar_type())}, 1);
  mask = at::cat({at::ones({B, lang.size(1)}, mask.options()), mask}, 1);
  // Positions past max_position_embeddings are an error when a step reaches them (OptDecoder::forward), as in
  // transformers: a run that meets EOS earlier is fine.
  Decoder dec(model, embeds);
  return gen::run(dec, at::full({B, 1}, g.bos, mask.options()), mask, g);
}

}  // namespace rt::blip2
