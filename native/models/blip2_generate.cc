// BLIP-2 OPT generation, reproducing transformers 4.37.2 (Blip2ForConditionalGeneration.generate ->
// OPTForCausalLM.generate(inputs_embeds=...)):
//  - the LM input is [projected queries | embed_tokens(prompt or [BOS])], mask [ones(Q) | prompt mask];
//    the prompt is used as given (nothing dropped, unlike BLIP);
//  - the sequence generate() tracks starts as a dummy [BOS] that is never fed to the model, so outputs are
//    [BOS] + generated tokens and max_length / min_length count that one token (max_new_tokens=n gives
//    max_length n+1);
//  - greedy / sampling: processors repetition penalty -> min length -> min new tokens, then warpers
//    temperature -> top-k -> top-p; finished rows get pad;
//  - beam search: 4.37's BeamSearchScorer (top 2·num_beams, EOS candidates ranked below num_beams
//    skipped, hypotheses scored sum log p / generated_len^length_penalty with generated_len counting EOS
//    and not the dummy BOS, `is_done` heuristics, finalize appending EOS and padding with pad).
// One native call runs the whole loop with the OPT self-attention KV cache.
#include <random>

#include "models/blip2.h"

namespace rt::blip2 {
namespace {

struct GenOptions {
  int64_t max_length = 20, min_length = 0, min_new_tokens = 0, num_beams = 1, num_return = 1, top_k = 50;
  double temperature = 1.0, top_p = 1.0, repetition_penalty = 1.0, length_penalty = 1.0;
  bool do_sample = false;
  std::string early_stopping = "false";  // "false" | "true" | "never"
  uint64_t seed = 0;
  bool has_seed = false;
  int64_t eos = 2, pad = 1, bos = 2;
};

// Options over the language model's generation config (built from text_config, as 4.37.2 does).
GenOptions parse_options(const json& o, const json& text, const OptConfig& t) {
  auto pick = [&](const char* key) -> json {
    if (o.is_object() && o.contains(key) && !o[key].is_null()) return o[key];
    if (text.is_object() && text.contains(key) && !text[key].is_null()) return text[key];
    return json();
  };
  auto num = [&](const char* key, double fallback) {
    json v = pick(key);
    if (v.is_null()) return fallback;
    if (!v.is_number()) throw Error(std::string("generate: option ") + key + " must be a number, got " + v.dump());
    return v.get<double>();
  };
  auto integer = [&](const char* key, int64_t fallback) {
    json v = pick(key);
    if (v.is_null()) return fallback;
    if (!v.is_number_integer()) throw Error(std::string("generate: option ") + key + " must be an integer, got " + v.dump());
    return v.get<int64_t>();
  };
  GenOptions g;
  g.eos = opt<int64_t>(o, "eos_token_id", t.eos);
  g.pad = opt<int64_t>(o, "pad_token_id", t.pad);
  g.bos = opt<int64_t>(o, "bos_token_id", t.bos);
  g.max_length = integer("max_length", 20);
  // max_new_tokens wins over max_length and counts from the dummy BOS (input length 1).
  if (o.is_object() && o.contains("max_new_tokens") && !o["max_new_tokens"].is_null()) {
    const int64_t n = opt<int64_t>(o, "max_new_tokens", 0);
    if (n < 1) throw Error("generate: max_new_tokens must be >= 1, got " + std::to_string(n));
    g.max_length = n + 1;
  }
  g.min_length = integer("min_length", 0);
  g.min_new_tokens = opt<int64_t>(o, "min_new_tokens", 0);
  g.num_beams = integer("num_beams", 1);
  g.num_return = integer("num_return_sequences", 1);
  g.top_k = integer("top_k", 50);
  g.temperature = num("temperature", 1.0);
  g.top_p = num("top_p", 1.0);
  g.repetition_penalty = num("repetition_penalty", 1.0);
  g.length_penalty = num("length_penalty", 1.0);
  {
    json v = pick("do_sample");
    if (!v.is_null() && !v.is_boolean()) throw Error("generate: option do_sample must be true or false, got " + v.dump());
    g.do_sample = v.is_null() ? false : v.get<bool>();
  }
  {
    json e = pick("early_stopping");
    if (!e.is_null()) {
      if (e.is_boolean()) g.early_stopping = e.get<bool>() ? "true" : "false";
      else if (e.is_string() && e.get<std::string>() == "never") g.early_stopping = "never";
      else throw Error("generate: option early_stopping must be true, false or \"never\", got " + e.dump());
    }
  }
  if (o.is_object() && o.contains("seed") && !o["seed"].is_null()) {
    if (!o["seed"].is_number_integer()) throw Error("generate: option seed must be an integer, got " + o["seed"].dump());
    g.seed = o["seed"].get<uint64_t>();
    g.has_seed = true;
  }
  // Generation settings a config or caller may hold that this loop does not implement: refused by name.
  for (const char* key : {"no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "num_beam_groups", "penalty_alpha", "diversity_penalty"}) {
    json v = pick(key);
    const bool active = !v.is_null() && !(v.is_number() && (v.get<double>() == 0 || (std::string(key) == "num_beam_groups" && v.get<double>() == 1)));
    if (active) throw Error(std::string("generate: ") + key + " " + v.dump() + " is not supported");
  }
  for (const char* key : {"bad_words_ids", "force_words_ids", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
                          "begin_suppress_tokens", "forced_decoder_ids", "sequence_bias", "constraints", "exponential_decay_length_penalty"}) {
    if (!pick(key).is_null()) throw Error(std::string("generate: ") + key + " is not supported");
  }
  for (const char* key : {"typical_p", "epsilon_cutoff", "eta_cutoff"}) {
    const double v = num(key, std::string(key) == "typical_p" ? 1.0 : 0.0);
    if ((std::string(key) == "typical_p" && v != 1.0) || (std::string(key) != "typical_p" && v != 0.0))
      throw Error(std::string("generate: ") + key + " " + std::to_string(v) + " is not supported");
  }
  auto check = [](bool ok, const std::string& what) {
    if (!ok) throw Error("generate: " + what);
  };
  check(g.max_length >= 2, "max_length must be >= 2 (it counts the leading BOS), got " + std::to_string(g.max_length));
  check(g.min_length >= 0, "min_length must be >= 0, got " + std::to_string(g.min_length));
  check(g.min_new_tokens >= 0, "min_new_tokens must be >= 0, got " + std::to_string(g.min_new_tokens));
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

// RepetitionPenaltyLogitsProcessor, MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor (the
// dummy BOS is the one input token). scores: [R, V], seqs: [R, cur_len] (dummy BOS included).
at::Tensor process(at::Tensor scores, const at::Tensor& seqs, int64_t cur_len, const GenOptions& g) {
  if (g.repetition_penalty != 1.0) {
    at::Tensor s = scores.gather(1, seqs);
    s = at::where(s < 0, s * g.repetition_penalty, s / g.repetition_penalty);
    scores = scores.scatter(1, seqs, s);
  }
  if (cur_len < g.min_length || cur_len - 1 < g.min_new_tokens) {
    scores = scores.clone();
    scores.select(1, g.eos).fill_(-std::numeric_limits<double>::infinity());
  }
  return scores;
}

// TopPLogitsWarper on ascending scores (min_tokens_to_keep = 1): the removal mask.
at::Tensor top_p_remove_sorted(const at::Tensor& ascending, double top_p) {
  at::Tensor remove = ascending.softmax(-1).cumsum(-1) <= (1.0 - top_p);
  remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);
  return remove;
}

// One sampling step: temperature -> top-k (ties with the k-th kept) -> top-p, one draw per row from the
// seeded CPU generator. Returns (token [R], log-prob under the warped distribution [R]).
std::pair<at::Tensor, at::Tensor> sample_step(at::Tensor scores, const GenOptions& g, at::Generator& gen) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (g.temperature != 1.0) scores = scores / g.temperature;
  const int64_t V = scores.size(-1);
  if (g.top_k > 0 && g.top_k < V) {
    at::Tensor kth = std::get<0>(scores.topk(g.top_k, -1)).narrow(-1, g.top_k - 1, 1);
    scores = scores.masked_fill(scores < kth, neg_inf);
  }
  if (g.top_p < 1.0) {
    auto [sorted, idx] = scores.sort(-1, /*descending=*/false);
    at::Tensor remove = top_p_remove_sorted(sorted, g.top_p);
    scores = scores.masked_fill(at::zeros_like(remove).scatter(-1, idx, remove), neg_inf);
  }
  at::Tensor probs = scores.softmax(-1).to(at::kCPU);
  at::Tensor pick = at::multinomial(probs, 1, /*replacement=*/false, gen).to(scores.device());  // [R, 1]
  return {pick.squeeze(1), scores.log_softmax(-1).gather(1, pick).squeeze(1)};
}

struct Start {
  at::Tensor embeds;  // [B, Q+P, H]
  at::Tensor mask;    // [B, Q+P]
};

// [projected queries | embed_tokens(prompt or BOS)] and [ones(Q) | prompt mask].
Start start_inputs(Blip2Model& model, const TensorMap& in, const at::Tensor& lang, const GenOptions& g) {
  const int64_t B = lang.size(0);
  auto lopts = at::TensorOptions().device(model.device()).dtype(at::kLong);
  at::Tensor ids, mask;
  auto it = in.find("input_ids");
  if (it == in.end()) {
    ids = at::full({B, 1}, g.bos, lopts);
    mask = at::ones_like(ids);
  } else {
    ids = model.ids_input(in, "input_ids", "blip2.generate");
    if (ids.size(1) < 1) throw Error("blip2.generate: input_ids (the prompt) is empty");
    if (ids.size(0) != B && ids.size(0) != 1)
      throw Error("blip2.generate: input_ids has " + std::to_string(ids.size(0)) + " rows for " + std::to_string(B) + " images");
    auto mit = in.find("attention_mask");
    if (mit != in.end()) {
      mask = mit->second.to(model.device(), at::kLong);
      if (mask.sizes() != ids.sizes()) throw Error("blip2.generate: attention_mask " + shape_str(mask.sizes()) + " does not match input_ids " + shape_str(ids.sizes()));
    } else {
      mask = at::ones_like(ids);
    }
    ids = ids.expand({B, -1}).contiguous();
    mask = mask.expand({B, -1}).contiguous();
  }
  auto& dec = model.language_model->model->decoder;
  at::Tensor embeds = at::cat({lang, dec->embed(ids).to(lang.scalar_type())}, 1);
  return {embeds, at::cat({at::ones({B, lang.size(1)}, mask.options()), mask}, 1)};
}

at::Tensor last_logits(Blip2Model& model, const at::Tensor& h) {
  return model.language_model->logits(h.select(1, h.size(1) - 1)).to(at::kFloat);  // [R, V]
}

// Greedy search and sampling (4.37 `greedy_search` / `sample`). Returns sequences [R, L] (dummy BOS first)
// and the log-softmax of the processed (greedy) or warped (sampling) scores at each chosen token [R, L-1].
TensorMap sample_loop(Blip2Model& model, Start s, const GenOptions& g) {
  auto& dec = model.language_model->model->decoder;
  const int64_t K = g.num_return;
  if (K > 1) {
    s.embeds = s.embeds.repeat_interleave(K, 0);
    s.mask = s.mask.repeat_interleave(K, 0);
  }
  const int64_t R = s.embeds.size(0);
  at::Tensor ids = at::full({R, 1}, g.bos, s.mask.options());
  OptCache cache = dec->start_cache();
  at::Generator gen;
  if (g.do_sample) gen = at::detail::createCPUGenerator(g.has_seed ? g.seed : std::random_device{}());
  at::Tensor unfinished = at::ones({R}, ids.options().dtype(at::kBool));
  std::vector<at::Tensor> logprobs;
  at::Tensor x = s.embeds, mask = s.mask;
  int64_t cur_len = 1;
  while (true) {
    at::Tensor scores = process(last_logits(model, dec->forward(x, mask, cache, /*keep=*/true)), ids, cur_len, g);
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
    x = dec->embed(next.unsqueeze(1)).to(x.scalar_type());
  }
  return {{"sequences", ids}, {"token_logprobs", at::stack(logprobs, 1)}};
}

// 4.37 BeamHypotheses: the num_beams best finished hypotheses of one image.
struct Hypotheses {
  std::vector<std::pair<double, std::vector<int64_t>>> beams;
  double worst = 1e9;
  bool done = false;
  void add(std::vector<int64_t> tokens, double sum_logprobs, int64_t generated_len, const GenOptions& g) {
    const double score = sum_logprobs / std::pow(static_cast<double>(generated_len), g.length_penalty);
    const auto nb = static_cast<size_t>(g.num_beams);
    if (beams.size() < nb || score > worst) {
      beams.emplace_back(score, std::move(tokens));
      if (beams.size() > nb) {
        std::vector<std::pair<double, size_t>> order;
        for (size_t i = 0; i < beams.size(); ++i) order.emplace_back(beams[i].first, i);
        std::sort(order.begin(), order.end());
        beams.erase(beams.begin() + static_cast<std::ptrdiff_t>(order[0].second));
        worst = order[1].first;
      } else {
        worst = std::min(score, worst);
      }
    }
  }
  // cur_len: the tracked length once this step's token is appended; the dummy BOS is the prompt.
  bool is_done(double best_sum_logprobs, int64_t cur_len, const GenOptions& g) const {
    if (beams.size() < static_cast<size_t>(g.num_beams)) return false;
    if (g.early_stopping == "true") return true;
    const int64_t len = (g.early_stopping == "never" && g.length_penalty > 0) ? g.max_length - 1 : cur_len - 1;
    return worst >= best_sum_logprobs / std::pow(static_cast<double>(len), g.length_penalty);
  }
};

TensorMap beam_loop(Blip2Model& model, Start s, const GenOptions& g) {
  auto& dec = model.language_model->model->decoder;
  const int64_t B = s.embeds.size(0), nb = g.num_beams, R = B * nb, keep = 2 * nb;
  at::Tensor x = s.embeds.repeat_interleave(nb, 0), mask = s.mask.repeat_interleave(nb, 0);
  auto dev = x.device();
  std::vector<std::vector<int64_t>> rows(R, std::vector<int64_t>{g.bos});
  std::vector<float> beam_scores(R, 0.0f);
  for (int64_t r = 0; r < R; ++r)
    if (r % nb != 0) beam_scores[r] = -1e9f;
  std::vector<Hypotheses> hyps(B);
  OptCache cache = dec->start_cache();
  int64_t cur_len = 1;
  auto cpu_long = at::TensorOptions().dtype(at::kLong);
  while (true) {
    at::Tensor logp = last_logits(model, dec->forward(x, mask, cache, /*keep=*/true)).log_softmax(-1);  // [R, V]
    const int64_t V = logp.size(1);
    at::Tensor seqs;
    if (g.repetition_penalty != 1.0) {
      std::vector<int64_t> flat;
      for (auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
      seqs = at::tensor(flat, cpu_long).view({R, cur_len}).to(dev);
    }
    logp = process(logp, seqs, cur_len, g);
    at::Tensor acc = (logp + at::tensor(beam_scores).to(dev).unsqueeze(1)).view({B, nb * V});
    auto [top_scores, top_idx] = acc.topk(keep, 1);
    // One host transfer per step: the 2·num_beams candidates of every image.
    at::Tensor sc = top_scores.to(at::kCPU).contiguous(), ix = top_idx.to(at::kCPU).contiguous();
    const float* scp = sc.data_ptr<float>();
    const int64_t* ixp = ix.data_ptr<int64_t>();
    std::vector<float> next_scores(R, 0.0f);
    std::vector<int64_t> next_tokens(R, g.pad), next_rows(R, 0);
    const int64_t step_len = cur_len + 1;
    for (int64_t b = 0; b < B; ++b) {
      if (hyps[b].done) {
        for (int64_t j = 0; j < nb; ++j) next_rows[b * nb + j] = b * nb;  // finished image: pad, score 0
        continue;
      }
      int64_t filled = 0;
      for (int64_t rank = 0; rank < keep; ++rank) {
        const float score = scp[b * keep + rank];
        const int64_t id = ixp[b * keep + rank], token = id % V, row = b * nb + id / V;
        if (token == g.eos) {
          if (rank >= nb) continue;  // an EOS ranked below the top num_beams does not finish a hypothesis
          hyps[b].add(rows[row], score, step_len - 1, g);
        } else {
          next_scores[b * nb + filled] = score;
          next_tokens[b * nb + filled] = token;
          next_rows[b * nb + filled] = row;
          ++filled;
        }
        if (filled == nb) break;
      }
      hyps[b].done = hyps[b].done || hyps[b].is_done(scp[b * keep], step_len, g);
    }
    std::vector<std::vector<int64_t>> next(R);
    for (int64_t r = 0; r < R; ++r) {
      next[r] = rows[next_rows[r]];
      next[r].push_back(next_tokens[r]);
    }
    rows.swap(next);
    beam_scores = next_scores;
    cache.reorder(at::tensor(next_rows, cpu_long).to(dev));
    ++cur_len;
    bool all_done = true;
    for (auto& h : hyps) all_done = all_done && h.done;
    if (all_done || cur_len >= g.max_length) break;
    x = dec->embed(at::tensor(next_tokens, cpu_long).view({R, 1}).to(dev)).to(x.scalar_type());
    mask = at::cat({mask, at::ones({R, 1}, mask.options())}, 1);
  }
  // finalize: open beams of unfinished images join their hypotheses; the best K of each image are returned.
  for (int64_t b = 0; b < B; ++b) {
    if (hyps[b].done) continue;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t r = b * nb + j;
      hyps[b].add(rows[r], beam_scores[r], static_cast<int64_t>(rows[r].size()) - 1, g);
    }
  }
  const int64_t K = g.num_return;
  std::vector<std::vector<int64_t>> best;
  std::vector<float> best_scores;
  for (int64_t b = 0; b < B; ++b) {
    auto beams = hyps[b].beams;
    std::stable_sort(beams.begin(), beams.end(), [](const auto& a, const auto& c) { return a.first < c.first; });
    for (int64_t j = 0; j < K; ++j) {
      best.push_back(beams.back().second);
      best_scores.push_back(static_cast<float>(beams.back().first));
      beams.pop_back();
    }
  }
  size_t longest = 0;
  for (auto& h : best) longest = std::max(longest, h.size());
  const auto width = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(longest) + 1, g.max_length));
  std::vector<int64_t> out(best.size() * width, g.pad);
  for (size_t i = 0; i < best.size(); ++i) {
    std::copy(best[i].begin(), best[i].end(), out.begin() + static_cast<std::ptrdiff_t>(i * width));
    if (best[i].size() < width) out[i * width + best[i].size()] = g.eos;
  }
  return {{"sequences", at::tensor(out, cpu_long).view({static_cast<int64_t>(best.size()), static_cast<int64_t>(width)}).to(dev)},
          {"sequences_scores", at::tensor(best_scores).to(dev)}};
}

}  // namespace

TensorMap generate(Blip2Model& model, const TensorMap& in, const json& options) {
  at::NoGradGuard no_grad;  // pure inference
  const GenOptions g = parse_options(options, model.text_json, model.tcfg);
  for (int64_t id : {g.eos, g.pad, g.bos})
    if (id < 0 || id >= model.tcfg.vocab) throw Error("blip2.generate: special token id " + std::to_string(id) + " is outside the vocabulary");
  at::Tensor lang = model.query_outputs(model.image_embeds(in, "blip2.generate")).second;
  Start s = start_inputs(model, in, lang, g);
  // Positions past max_position_embeddings are an error when a step reaches them (OptDecoder::forward), as in
  // transformers: a run that meets EOS earlier is fine.
  return g.num_beams > 1 ? beam_loop(model, s, g) : sample_loop(model, s, g);
}

}  // namespace rt::blip2
