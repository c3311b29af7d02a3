// BLIP generation, reproducing transformers 4.57 generate() for BlipForConditionalGeneration:
//  - start from [BOS]; with a prompt, column 0 becomes BOS and the last column ([SEP]) is dropped;
//  - EOS is SEP (102), pad 0; max_length/min_length count the start tokens;
//  - greedy / sampling (`_sample`): processors repetition penalty -> min length, then warpers
//    temperature -> top-k -> top-p; finished rows are padded with pad;
//  - beam search: the vectorised `_beam_search` (top 2·num_beams candidates, finished hypotheses kept by
//    length-normalised score, early-stop heuristic, finished outputs filled with "pad or EOS").
// One native call runs the whole loop with a KV cache (self-attention grows, cross-attention keys/values
// are computed once per image).
#include <random>

#include "models/blip.h"

namespace rt::blip {
namespace {

struct GenOptions {
  int64_t max_length = 20, min_length = 0, num_beams = 1, num_return = 1, top_k = 50;
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0, length_penalty = 1.0;
  bool do_sample = false;
  std::string early_stopping = "false";  // "false" | "true" | "never"
  uint64_t seed = 0;
  bool has_seed = false;
  int64_t eos = 102, pad = 0, bos = 30522;
};

GenOptions parse_options(const json& o, const TextConfig& t) {
  GenOptions g;
  g.max_length = opt<int64_t>(o, "max_length", 20);
  g.min_length = opt<int64_t>(o, "min_length", 0);
  g.num_beams = opt<int64_t>(o, "num_beams", 1);
  g.num_return = opt<int64_t>(o, "num_return_sequences", 1);
  g.top_k = opt<int64_t>(o, "top_k", 50);
  g.temperature = opt<double>(o, "temperature", 1.0);
  g.top_p = opt<double>(o, "top_p", 1.0);
  g.repetition_penalty = opt<double>(o, "repetition_penalty", 1.0);
  g.length_penalty = opt<double>(o, "length_penalty", 1.0);
  g.do_sample = opt<bool>(o, "do_sample", false);
  g.eos = opt<int64_t>(o, "eos_token_id", t.sep);
  g.pad = opt<int64_t>(o, "pad_token_id", t.pad);
  g.bos = opt<int64_t>(o, "bos_token_id", t.bos);
  if (o.is_object() && o.contains("early_stopping") && !o["early_stopping"].is_null()) {
    const json& e = o["early_stopping"];
    if (e.is_boolean()) g.early_stopping = e.get<bool>() ? "true" : "false";
    else if (e.is_string() && e.get<std::string>() == "never") g.early_stopping = "never";
    else throw Error("generate: option early_stopping must be true, false or \"never\", got " + e.dump());
  }
  if (o.is_object() && o.contains("seed") && !o["seed"].is_null()) {
    if (!o["seed"].is_number_integer()) throw Error("generate: option seed must be an integer, got " + o["seed"].dump());
    g.seed = o["seed"].get<uint64_t>();
    g.has_seed = true;
  }
  auto check = [](bool ok, const std::string& what) {
    if (!ok) throw Error("generate: " + what);
  };
  check(g.max_length >= 1, "max_length must be >= 1, got " + std::to_string(g.max_length));
  check(g.min_length >= 0, "min_length must be >= 0, got " + std::to_string(g.min_length));
  check(g.num_beams >= 1, "num_beams must be >= 1, got " + std::to_string(g.num_beams));
  check(g.num_return >= 1, "num_return_sequences must be >= 1, got " + std::to_string(g.num_return));
  check(g.top_k >= 0, "top_k must be >= 0, got " + std::to_string(g.top_k));
  check(g.temperature > 0, "temperature must be > 0, got " + std::to_string(g.temperature));
  check(g.top_p > 0 && g.top_p <= 1, "top_p must be in (0, 1], got " + std::to_string(g.top_p));
  check(g.repetition_penalty > 0, "repetition_penalty must be > 0, got " + std::to_string(g.repetition_penalty));
  check(!(g.num_beams > 1 && g.do_sample), "beam sampling (num_beams > 1 with do_sample) is not supported");
  check(g.num_beams > 1 || g.do_sample || g.num_return == 1,
        "greedy search returns one sequence per image; num_return_sequences " + std::to_string(g.num_return) + " needs sampling or beam search");
  check(g.num_beams == 1 || g.num_return <= g.num_beams,
        "num_return_sequences " + std::to_string(g.num_return) + " exceeds num_beams " + std::to_string(g.num_beams));
  return g;
}

// transformers' RepetitionPenaltyLogitsProcessor then MinLengthLogitsProcessor.
// scores: [R, V] (logits, or log-probs in beam search), seqs: [R, cur_len]
at::Tensor process(at::Tensor scores, const at::Tensor& seqs, int64_t cur_len, const GenOptions& g) {
  if (g.repetition_penalty != 1.0) {
    at::Tensor s = scores.gather(1, seqs);
    s = at::where(s < 0, s * g.repetition_penalty, s / g.repetition_penalty);
    scores = scores.scatter(1, seqs, s);
  }
  if (cur_len < g.min_length) {
    scores = scores.clone();
    scores.select(1, g.eos).fill_(-std::numeric_limits<double>::infinity());
  }
  return scores;
}

// transformers' TopPLogitsWarper on scores sorted ascending along the last dim (min_tokens_to_keep = 1):
// drops the tokens whose cumulative probability stays <= 1 - top_p. Returns the removal mask.
at::Tensor top_p_remove_sorted(const at::Tensor& ascending, double top_p) {
  at::Tensor cumulative = ascending.softmax(-1).cumsum(-1);
  at::Tensor remove = cumulative <= (1.0 - top_p);
  remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);  // keep at least one token
  return remove;
}

// One sampling step: transformers' warpers (temperature -> top-k -> top-p) on scores [R, V], then one
// draw per row from the CPU generator. Returns (token [R], log-prob of the token under the warped
// distribution [R]). With top-k active, top-p and the draw only look at the k candidates: every other
// token is already -inf there, so the distribution is the same and the full-vocabulary sort is avoided.
std::pair<at::Tensor, at::Tensor> sample_step(at::Tensor scores, const GenOptions& g, at::Generator& gen) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (g.temperature != 1.0) scores = scores / g.temperature;
  const int64_t V = scores.size(-1);
  at::Tensor cand_scores, cand_ids;  // [R, C]
  if (g.top_k > 0 && g.top_k < V) {
    auto [vals, idx] = scores.topk(g.top_k, -1);  // descending
    // transformers keeps every token tied with the k-th score; fall back to the full path on such ties.
    at::Tensor kept = (scores >= vals.narrow(-1, g.top_k - 1, 1)).sum(-1);
    if (kept.max().item<int64_t>() == g.top_k) {
      cand_scores = vals.flip({-1});  // ascending, as the top-p warper sorts
      cand_ids = idx.flip({-1});
    } else {
      scores = scores.masked_fill(scores < vals.narrow(-1, g.top_k - 1, 1), neg_inf);
    }
  }
  if (!cand_scores.defined()) {
    if (g.top_p < 1.0) {
      std::tie(cand_scores, cand_ids) = scores.sort(-1, /*descending=*/false);
    } else {
      cand_scores = scores;  // plain (temperature) sampling over the whole vocabulary: no sort needed
    }
  }
  if (g.top_p < 1.0) cand_scores = cand_scores.masked_fill(top_p_remove_sorted(cand_scores, g.top_p), neg_inf);
  // Sampling draws on the CPU from one seeded generator, so a seed gives the same captions on any device.
  at::Tensor probs = cand_scores.softmax(-1).to(at::kCPU);
  at::Tensor pick = at::multinomial(probs, 1, /*replacement=*/false, gen).to(cand_scores.device());  // [R, 1]
  at::Tensor token = cand_ids.defined() ? cand_ids.gather(1, pick).squeeze(1) : pick.squeeze(1);
  at::Tensor logprob = cand_scores.log_softmax(-1).gather(1, pick).squeeze(1);
  return {token, logprob};
}

// Prompt handling of BlipForConditionalGeneration.generate: BOS at column 0, last column dropped.
// Returns (ids [B, L0], mask [B, L0]).
std::pair<at::Tensor, at::Tensor> start_tokens(BlipModel& model, const TensorMap& in, int64_t B, const GenOptions& g) {
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
  at::Tensor mask;
  auto mit = in.find("attention_mask");
  if (mit != in.end()) {
    mask = mit->second.to(model.device(), at::kLong);
    if (mask.sizes() != ids.sizes()) throw Error("blip.generate: attention_mask " + shape_str(mask.sizes()) + " does not match input_ids " + shape_str(ids.sizes()));
  } else {
    mask = at::ones_like(ids);
  }
  ids = ids.clone();
  ids.select(1, 0).fill_(g.bos);
  ids = ids.narrow(1, 0, ids.size(1) - 1).expand({B, -1}).contiguous();
  mask = mask.narrow(1, 0, mask.size(1) - 1).expand({B, -1}).contiguous();
  return {ids, mask};
}

// Greedy search and sampling (transformers `_sample`). Returns sequences [B·K, L] and the
// log-softmax of the processed scores at each chosen token [B·K, L - L0] (0 after EOS).
TensorMap sample_loop(BlipModel& model, const at::Tensor& embeds, at::Tensor ids, at::Tensor mask, const GenOptions& g) {
  TextDecoderImpl& dec = *model.text_decoder;
  const int64_t K = g.num_return;
  if (K > 1) {
    ids = ids.repeat_interleave(K, 0);
    mask = mask.repeat_interleave(K, 0);
  }
  const int64_t R = ids.size(0);
  DecoderCache cache = dec.start_cache(embeds, K);
  at::Generator gen;
  if (g.do_sample) gen = at::detail::createCPUGenerator(g.has_seed ? g.seed : std::random_device{}());
  at::Tensor unfinished = at::ones({R}, ids.options().dtype(at::kBool));
  std::vector<at::Tensor> logprobs;
  at::Tensor next_input = ids;
  int64_t cur_len = ids.size(1);
  while (true) {
    at::Tensor h = dec.hidden(next_input, mask, cache, /*keep=*/true);
    at::Tensor logits = dec.logits(h.select(1, h.size(1) - 1)).to(at::kFloat);  // [R, V]
    at::Tensor scores = process(logits, ids, cur_len, g);
    at::Tensor next, lp;
    if (g.do_sample) {
      std::tie(next, lp) = sample_step(scores, g, gen);
    } else {
      next = scores.argmax(-1);
      lp = scores.log_softmax(-1).gather(1, next.unsqueeze(1)).squeeze(1);
    }
    logprobs.push_back(at::where(unfinished, lp, at::zeros_like(lp)));
    next = at::where(unfinished, next, at::full_like(next, g.pad));
    ids = at::cat({ids, next.unsqueeze(1)}, 1);
    mask = at::cat({mask, at::ones({R, 1}, mask.options())}, 1);
    unfinished = unfinished & (next != g.eos);
    ++cur_len;
    if (cur_len >= g.max_length || !unfinished.any().item<bool>()) break;
    next_input = next.unsqueeze(1);
  }
  return {{"sequences", ids}, {"token_logprobs", at::stack(logprobs, 1)}};
}

// take_along_dim over dim 1 for [B, K, ...] tensors with indices [B, K'].
at::Tensor gather_beams(const at::Tensor& t, const at::Tensor& idx) {
  at::Tensor i = idx;
  while (i.dim() < t.dim()) i = i.unsqueeze(-1);
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape[1] = idx.size(1);
  return t.gather(1, i.expand(shape));
}

// Beam search (transformers 4.57 `_beam_search`, do_sample=False).
TensorMap beam_loop(BlipModel& model, const at::Tensor& embeds, at::Tensor ids0, at::Tensor mask, const GenOptions& g) {
  TextDecoderImpl& dec = *model.text_decoder;
  const int64_t B = ids0.size(0), nb = g.num_beams, L0 = ids0.size(1), maxL = g.max_length, keep = 2 * nb;
  const int64_t R = B * nb;
  auto lopts = ids0.options().dtype(at::kLong);
  auto fopts = ids0.options().dtype(at::kFloat);
  auto bopts = ids0.options().dtype(at::kBool);
  at::Tensor flat_ids = ids0.repeat_interleave(nb, 0);
  mask = mask.repeat_interleave(nb, 0);
  DecoderCache cache = dec.start_cache(embeds, nb);

  const int64_t fill = g.pad != 0 ? g.pad : g.eos;  // "pad_token_id or eos_token_id"
  at::Tensor running = at::full({B, nb, maxL}, fill, lopts);
  running.narrow(2, 0, L0).copy_(flat_ids.view({B, nb, L0}));
  at::Tensor sequences = running.clone();
  at::Tensor running_scores = at::zeros({B, nb}, fopts);
  running_scores.narrow(1, 1, nb - 1).fill_(-1e9);
  at::Tensor beam_scores = at::full({B, nb}, -1e9, fopts);
  at::Tensor gen_len = at::zeros({B, nb}, lopts);  // generated length of stored hypotheses (for the crop)
  at::Tensor finished = at::zeros({B, nb}, bopts);
  at::Tensor improvable = at::ones({B, 1}, bopts);
  at::Tensor top_nb = at::cat({at::ones({nb}, bopts), at::zeros({keep - nb}, bopts)}).view({1, keep});
  at::Tensor batch_offset = (at::arange(B, lopts) * nb).view({B, 1});
  const bool es_true = g.early_stopping == "true";

  at::Tensor next_input = flat_ids;
  int64_t cur_len = L0;
  while (true) {
    at::Tensor h = dec.hidden(next_input, mask, cache, /*keep=*/true);
    at::Tensor logits = dec.logits(h.select(1, h.size(1) - 1)).to(at::kFloat);  // [R, V]
    const int64_t V = logits.size(1);
    at::Tensor logp = process(logits.log_softmax(-1), running.view({R, maxL}).narrow(1, 0, cur_len), cur_len, g);
    at::Tensor acc = (logp.view({B, nb, V}) + running_scores.unsqueeze(2)).view({B, nb * V});
    auto [topk_lp, topk_idx] = acc.topk(keep, 1);
    at::Tensor src_beam = topk_idx.div(V, "floor");
    at::Tensor tokens = topk_idx.remainder(V);
    at::Tensor topk_seq = gather_beams(running, src_beam);  // [B, keep, maxL]
    topk_seq.select(2, cur_len).copy_(tokens);
    // Stopping criteria: EOS, or the sequence reaching max_length.
    at::Tensor hits = cur_len + 1 >= maxL ? at::ones_like(tokens, bopts) : (tokens == g.eos);

    // Running beams for the next step: the best num_beams candidates that did not stop.
    at::Tensor running_lp = topk_lp + hits.to(at::kFloat) * -1e9;
    at::Tensor next_idx = std::get<1>(running_lp.topk(nb, 1));
    running = gather_beams(topk_seq, next_idx);
    running_scores = running_lp.gather(1, next_idx);
    at::Tensor cache_rows = (src_beam.gather(1, next_idx) + batch_offset).view({R});

    // Finished hypotheses: candidates among the top num_beams that stopped, scored with the length penalty.
    at::Tensor just_finished = hits & top_nb;
    at::Tensor fin_lp = topk_lp / std::pow(static_cast<double>(cur_len + 1 - L0), g.length_penalty);
    at::Tensor full = finished.all(-1, true) & at::full({B, 1}, es_true, bopts);
    fin_lp = fin_lp + full.to(at::kFloat) * -1e9;
    fin_lp = fin_lp + (~improvable).to(at::kFloat) * -1e9;
    fin_lp = fin_lp + (~just_finished).to(at::kFloat) * -1e9;
    at::Tensor merged_scores = at::cat({beam_scores, fin_lp}, 1);
    at::Tensor sel = std::get<1>(merged_scores.topk(nb, 1));
    sequences = gather_beams(at::cat({sequences, topk_seq}, 1), sel);
    beam_scores = merged_scores.gather(1, sel);
    gen_len = at::cat({gen_len, at::full({B, keep}, cur_len + 1 - L0, lopts)}, 1).gather(1, sel);
    finished = at::cat({finished, just_finished}, 1).gather(1, sel);

    cache.reorder(cache_rows);
    ++cur_len;
    const double best_len = (g.early_stopping == "never" && g.length_penalty > 0) ? static_cast<double>(maxL - L0) : static_cast<double>(cur_len - L0);
    at::Tensor best_running = running_scores.narrow(1, 0, 1) / std::pow(best_len, g.length_penalty);
    at::Tensor worst_finished = at::where(finished, std::get<0>(beam_scores.min(1, true)).expand({B, nb}), at::full({B, nb}, -1e9, fopts));
    improvable = improvable & (best_running > worst_finished).any(-1, true);
    const bool improvement_possible = improvable.any().item<bool>();
    const bool open_beam = !(es_true && finished.all().item<bool>());
    const bool valid_continuations = !hits.all().item<bool>();
    if (!(improvement_possible && open_beam && valid_continuations)) break;
    next_input = running.select(2, cur_len - 1).reshape({R, 1});
    mask = at::cat({mask, at::ones({R, 1}, mask.options())}, 1);
  }
  const int64_t K = g.num_return;
  at::Tensor out = sequences.narrow(1, 0, K).reshape({B * K, maxL});
  at::Tensor scores = beam_scores.narrow(1, 0, K).reshape({B * K});
  const int64_t out_len = L0 + gen_len.narrow(1, 0, K).max().item<int64_t>();
  return {{"sequences", out.narrow(1, 0, out_len).contiguous()}, {"sequences_scores", scores}};
}

}  // namespace

TensorMap generate(BlipModel& model, const TensorMap& in, const json& options) {
  at::NoGradGuard no_grad;  // pure inference
  const GenOptions g = parse_options(options, model.tcfg);
  at::Tensor embeds = model.image_embeds(in, "blip.generate");
  const int64_t B = embeds.size(0);
  auto [ids, mask] = start_tokens(model, in, B, g);
  if (ids.size(1) >= g.max_length)
    throw Error("blip.generate: the start tokens already have length " + std::to_string(ids.size(1)) + " >= max_length " + std::to_string(g.max_length));
  if (g.max_length > model.tcfg.max_positions)
    throw Error("blip.generate: max_length " + std::to_string(g.max_length) + " exceeds max_position_embeddings " + std::to_string(model.tcfg.max_positions));
  for (int64_t id : {g.eos, g.pad, g.bos})
    if (id < 0 || id >= model.tcfg.vocab) throw Error("blip.generate: special token id " + std::to_string(id) + " is outside the vocabulary");
  return g.num_beams > 1 ? beam_loop(model, embeds, ids, mask, g) : sample_loop(model, embeds, ids, mask, g);
}

}  // namespace rt::blip
