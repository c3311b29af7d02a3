// BLIP generation, reproducing transformers 4.57 generate() for BlipForConditionalGeneration on the shared
// generation core (generation.{h,cc}); this file holds BLIP's rules and its decoder step:
//  - start from [BOS]; with a prompt, column 0 becomes BOS and the last column ([SEP]) is dropped;
//  - EOS is SEP (102), pad 0; max_length/min_length count the start tokens;
//  - greedy / sampling: repetition penalty -> min length, then temperature -> top-k -> top-p (drawn among
//    the candidates, gen::Draw::candidates); finished rows are padded with pad;
//  - beam search: 4.57's vectorised `_beam_search` (gen::Beam::vectorised).
// The text decoder keeps a self-attention KV cache; cross-attention keys/values are computed once per image.
#include "models/blip.h"
#include "models/generation.h"

namespace rt::blip {
namespace {

// Prompt handling of BlipForConditionalGeneration.generate: BOS at column 0, last column dropped.
// Returns (ids [B, L0], mask [B, L0]).
std::pair<at::Tensor, at::Tensor> start_tokens(BlipModel& model, const TensorMap& in, int64_t B, const gen::Options& g) {
  auto opts = at::TensorOptions().device(model.device()).dtype(at::kLong);
  auto it = in.find("input_ids");
  if (it == in.end()) {
    at::Tensor ids = at::full({B, 1}, g.bos, opts);
    return {ids, at::ones_like(ids)};
  }
  at::Tensor ids = model.ids_input(in, "input_ids", "blip.generate");
  if (ids.size(1) < 2) throw Error("blip.generate: input_ids (the prompt) needs at least 2 columns ([CLS] ... [SEP]), got " + shape_str(ids.sizes()));
  if (ids.size(0) != B && ids.size(0) != 1)
    throw Error("blip.generate: input_ids has " + std::to_string(ids.size(0)) + " rows for " + std::to_string(B) + " images");
  at::Tensor mask = gen::mask_input(in, ids, "blip.generate").to(at::kLong);
  ids = ids.clone();
  ids.select(1, 0).fill_(g.bos);
  ids = ids.narrow(1, 0, ids.size(1) - 1).expand({B, -1}).contiguous();
  mask = mask.narrow(1, 0, mask.size(1) - 1).expand({B, -1}).contiguous();
  return {ids, mask};
}

// The BERT text decoder as the generation core steps it: token ids in, cross-attention over the image.
struct Decoder : gen::Decoder {
  TextDecoderImpl& dec;
  at::Tensor embeds, ids;  // image embeddings [B, N, Hv]; start tokens [B, L0]
  DecoderCache cache;
  at::Tensor pending;  // ids the next step feeds [R, T]
  Decoder(TextDecoderImpl& d, at::Tensor e, at::Tensor i) : dec(d), embeds(std::move(e)), ids(std::move(i)) {}
  void start(int64_t repeat) override {
    cache = dec.start_cache(embeds, repeat);
    pending = repeat > 1 ? ids.repeat_interleave(repeat, 0) : ids;
  }
  // mask2d: [R, past+T] -> [R, V]
  at::Tensor step(const at::Tensor& mask2d) override {
    at::Tensor h = dec.hidden(pending, mask2d, cache, /*keep=*/true);
    return dec.logits(h.select(1, h.size(1) - 1)).to(at::kFloat);
  }
  void feed(const at::Tensor& tokens) override { pending = tokens.unsqueeze(1); }
  void reorder(const at::Tensor& rows) override { cache.reorder(rows); }
};

}  // namespace

TensorMap generate(BlipModel& model, const TensorMap& in, const json& options) {
  at::NoGradGuard no_grad;  // pure inference
  const gen::Rules rules{model.tcfg.sep, model.tcfg.pad, model.tcfg.bos, /*dummy_bos=*/false, gen::Draw::candidates, gen::Beam::vectorised};
  const gen::Options g = gen::parse_options(options, json(), rules);
  at::Tensor embeds = model.image_embeds(in, "blip.generate");
  const int64_t B = embeds.size(0);
  auto [ids, mask] = start_tokens(model, in, B, g);
  if (ids.size(1) >= g.max_length)
    throw Error("blip.generate: the start tokens already have length " + std::to_string(ids.size(1)) + " >= max_length " + std::to_string(g.max_length));
  if (g.max_length > model.tcfg.max_positions)
    throw Error("blip.generate: max_length " + std::to_string(g.max_length) + " exceeds max_position_embeddings " + std::to_string(model.tcfg.max_positions));
  gen::check_special_ids(g, model.tcfg.vocab, "blip.generate");
  Decoder dec(*model.text_decoder, embeds, ids);
  return gen::run(dec, ids, mask, g);
}

}  // namespace rt::blip
