// The captioners' generation core (see generation.h): transformers' generate() for greedy search, sampling and
// beam search, one native call per batch, the decoder's KV cache carried between steps.
#include "models/generation.h"

#include <random>

namespace rt::gen {

Options parse_options(const json& o, const json& defaults, const Rules& rules) {
  // An option given in the call wins over the defaults (BLIP-2's text_config).
  auto pick = [&](const char* key) -> json {
    if (o.is_object() && o.contains(key) && !o[key].is_null()) return o[key];
    if (defaults.is_object() && defaults.contains(key) && !defaults[key].is_null()) return defaults[key];
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
  auto given = [&](const char* key) { return o.is_object() && o.contains(key) && !o[key].is_null(); };
  Options g;
  g.rules = rules;
  g.eos = opt<int64_t>(o, "eos_token_id", rules.eos);
  g.pad = opt<int64_t>(o, "pad_token_id", rules.pad);
  g.bos = opt<int64_t>(o, "bos_token_id", rules.bos);
  g.max_length = integer("max_length", 20);
  if (rules.dummy_bos) {
    // max_new_tokens wins over max_length and counts from the dummy BOS (input length 1).
    if (given("max_new_tokens")) {
      const int64_t n = opt<int64_t>(o, "max_new_tokens", 0);
      if (n < 1) throw Error("generate: max_new_tokens must be >= 1, got " + std::to_string(n));
      g.max_length = n + 1;
    }
    g.min_new_tokens = opt<int64_t>(o, "min_new_tokens", 0);
  } else {
    for (const char* key : {"max_new_tokens", "min_new_tokens"})
      if (given(key)) throw Error(std::string("generate: ") + key + " is not supported for this model (max_length and min_length count the start tokens)");
  }
  g.min_length = integer("min_length", 0);
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
  if (given("seed")) {
    if (!o["seed"].is_number_integer()) throw Error("generate: option seed must be an integer, got " + o["seed"].dump());
    g.seed = o["seed"].get<uint64_t>();
    g.has_seed = true;
  }
  // Generation settings a config or caller may hold that these loops do not implement: refused by name.
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
  if (rules.dummy_bos)
    check(g.max_length >= 2, "max_length must be >= 2 (it counts the leading BOS), got " + std::to_string(g.max_length));
  else
    check(g.max_length >= 1, "max_length must be >= 1, got " + std::to_string(g.max_length));
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

at::Tensor shifted_caption_loss(const at::Tensor& logits, const at::Tensor& labels, double smoothing) {
  const int64_t T = logits.size(1), V = logits.size(2);
  at::Tensor shifted = logits.narrow(1, 0, T - 1).reshape({-1, V}).to(at::kFloat);
  at::Tensor targets = labels.narrow(1, 1, T - 1).reshape({-1});
  namespace F = torch::nn::functional;
  return F::cross_entropy(shifted, targets, F::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(smoothing));
}

void check_special_ids(const Options& g, int64_t vocab, const std::string& where) {
  for (int64_t id : {g.eos, g.pad, g.bos})
    if (id < 0 || id >= vocab) throw Error(where + ": special token id " + std::to_string(id) + " is outside the vocabulary");
}

at::Tensor ids_input(const TensorMap& in, const std::string& name, const std::string& where, const at::Device& device) {
  const at::Tensor& ids = need(in, name, where);
  if (ids.dim() != 2) throw Error(where + ": " + name + " must be [B, T], got " + shape_str(ids.sizes()));
  if (at::isFloatingType(ids.scalar_type())) throw Error(where + ": " + name + " must hold integer ids, got a floating tensor");
  return ids.to(device, at::kLong);
}

at::Tensor mask_input(const TensorMap& in, const at::Tensor& ids, const std::string& where) {
  auto it = in.find("attention_mask");
  if (it == in.end()) return at::ones_like(ids);
  at::Tensor mask = it->second.to(ids.device());
  if (mask.sizes() != ids.sizes())
    throw Error(where + ": attention_mask " + shape_str(mask.sizes()) + " does not match input_ids " + shape_str(ids.sizes()));
  return mask;
}

namespace {

// RepetitionPenaltyLogitsProcessor, MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor (tokens
// counted after the start_len tracked start tokens). scores: [R, V] (logits, or log-probs in beam search),
// seqs: [R, cur_len] (may be undefined without a repetition penalty).
at::Tensor process(at::Tensor scores, const at::Tensor& seqs, int64_t cur_len, int64_t start_len, const Options& g) {
  if (g.repetition_penalty != 1.0) {
    at::Tensor s = scores.gather(1, seqs);
    s = at::where(s < 0, s * g.repetition_penalty, s / g.repetition_penalty);
    scores = scores.scatter(1, seqs, s);
  }
  if (cur_len < g.min_length || cur_len - start_len < g.min_new_tokens) {
    scores = scores.clone();
    scores.select(1, g.eos).fill_(-std::numeric_limits<double>::infinity());
  }
  return scores;
}

// TopPLogitsWarper on scores sorted ascending along the last dim (min_tokens_to_keep = 1): drops the tokens
// whose cumulative probability stays <= 1 - top_p. Returns the removal mask.
at::Tensor top_p_remove_sorted(const at::Tensor& ascending, double top_p) {
  at::Tensor remove = ascending.softmax(-1).cumsum(-1) <= (1.0 - top_p);
  remove.narrow(-1, remove.size(-1) - 1, 1).fill_(false);  // keep at least one token
  return remove;
}

// One sampling step: the warpers temperature -> top-k (ties with the k-th kept) -> top-p on scores [R, V],
// then one draw per row from the seeded CPU generator (so a seed gives the same captions on any device).
// Returns (token [R], log-prob of the token under the warped distribution [R]).
std::pair<at::Tensor, at::Tensor> sample_step(at::Tensor scores, const Options& g, at::Generator& gen) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (g.temperature != 1.0) scores = scores / g.temperature;
  const int64_t V = scores.size(-1);
  if (g.rules.draw == Draw::vocabulary) {
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
  // Draw::candidates: with top-k active, top-p and the draw only look at the k candidates (every other token
  // is -inf there, so the distribution is the same and the full-vocabulary sort is avoided).
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
  at::Tensor probs = cand_scores.softmax(-1).to(at::kCPU);
  at::Tensor pick = at::multinomial(probs, 1, /*replacement=*/false, gen).to(cand_scores.device());  // [R, 1]
  at::Tensor token = cand_ids.defined() ? cand_ids.gather(1, pick).squeeze(1) : pick.squeeze(1);
  at::Tensor logprob = cand_scores.log_softmax(-1).gather(1, pick).squeeze(1);
  return {token, logprob};
}

// Greedy search and sampling (transformers `_sample`; 4.37's `greedy_search` / `sample`). Returns sequences
// [R, L] and the log-softmax of the processed (greedy) or warped (sampling) scores at each chosen token
// [R, L - L0] (0 after EOS); finished rows are padded with pad.
TensorMap sample_loop(Decoder& dec, at::Tensor ids, at::Tensor mask, const Options& g) {
  const int64_t K = g.num_return, start_len = ids.size(1);
  if (K > 1) {
    ids = ids.repeat_interleave(K, 0);
    mask = mask.repeat_interleave(K, 0);
  }
  const int64_t R = ids.size(0);
  dec.start(K);
  at::Generator gen;
  if (g.do_sample) gen = at::detail::createCPUGenerator(g.has_seed ? g.seed : std::random_device{}());
  at::Tensor unfinished = at::ones({R}, ids.options().dtype(at::kBool));
  std::vector<at::Tensor> logprobs;
  int64_t cur_len = start_len;
  while (true) {
    at::Tensor scores = process(dec.step(mask), ids, cur_len, start_len, g);  // [R, V]
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
    dec.feed(next);
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

// Beam::vectorised (transformers 4.57 `_beam_search`, do_sample=False).
TensorMap beam_vectorised(Decoder& dec, const at::Tensor& ids0, at::Tensor mask, const Options& g) {
  const int64_t B = ids0.size(0), nb = g.num_beams, L0 = ids0.size(1), maxL = g.max_length, keep = 2 * nb;
  const int64_t R = B * nb;
  auto lopts = ids0.options().dtype(at::kLong);
  auto fopts = ids0.options().dtype(at::kFloat);
  auto bopts = ids0.options().dtype(at::kBool);
  at::Tensor flat_ids = ids0.repeat_interleave(nb, 0);
  mask = mask.repeat_interleave(nb, 0);
  dec.start(nb);

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

  int64_t cur_len = L0;
  while (true) {
    at::Tensor logits = dec.step(mask);  // [R, V]
    const int64_t V = logits.size(1);
    at::Tensor logp = process(logits.log_softmax(-1), running.view({R, maxL}).narrow(1, 0, cur_len), cur_len, L0, g);
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

    dec.reorder(cache_rows);
    ++cur_len;
    const double best_len = (g.early_stopping == "never" && g.length_penalty > 0) ? static_cast<double>(maxL - L0) : static_cast<double>(cur_len - L0);
    at::Tensor best_running = running_scores.narrow(1, 0, 1) / std::pow(best_len, g.length_penalty);
    at::Tensor worst_finished = at::where(finished, std::get<0>(beam_scores.min(1, true)).expand({B, nb}), at::full({B, nb}, -1e9, fopts));
    improvable = improvable & (best_running > worst_finished).any(-1, true);
    const bool improvement_possible = improvable.any().item<bool>();
    const bool open_beam = !(es_true && finished.all().item<bool>());
    const bool valid_continuations = !hits.all().item<bool>();
    if (!(improvement_possible && open_beam && valid_continuations)) break;
    dec.feed(running.select(2, cur_len - 1).reshape({R}));
    mask = at::cat({mask, at::ones({R, 1}, mask.options())}, 1);
  }
  const int64_t K = g.num_return;
  at::Tensor out = sequences.narrow(1, 0, K).reshape({B * K, maxL});
  at::Tensor scores = beam_scores.narrow(1, 0, K).reshape({B * K});
  const int64_t out_len = L0 + gen_len.narrow(1, 0, K).max().item<int64_t>();
  return {{"sequences", out.narrow(1, 0, out_len).contiguous()}, {"sequences_scores", scores}};
}

// 4.37 BeamHypotheses: the num_beams best finished hypotheses of one image.
struct Hypotheses {
  std::vector<std::pair<double, std::vector<int64_t>>> beams;
  double worst = 1e9;
  bool done = false;
  void add(std::vector<int64_t> tokens, double sum_logprobs, int64_t generated_len, const Options& g) {
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
  // cur_len: the tracked length once this step's token is appended; the start tokens (start_len) are the prompt.
  bool is_done(double best_sum_logprobs, int64_t cur_len, int64_t start_len, const Options& g) const {
    if (beams.size() < static_cast<size_t>(g.num_beams)) return false;
    if (g.early_stopping == "true") return true;
    const int64_t len = (g.early_stopping == "never" && g.length_penalty > 0) ? g.max_length - start_len : cur_len - start_len;
    return worst >= best_sum_logprobs / std::pow(static_cast<double>(len), g.length_penalty);
  }
};

// Beam::scorer (transformers 4.37.2 `beam_search` with BeamSearchScorer): hypotheses are host-side token lists.
TensorMap beam_scorer(Decoder& dec, const at::Tensor& ids0, at::Tensor mask, const Options& g) {
  const int64_t B = ids0.size(0), nb = g.num_beams, R = B * nb, keep = 2 * nb, start_len = ids0.size(1);
  mask = mask.repeat_interleave(nb, 0);
  dec.start(nb);
  auto dev = mask.device();
  at::Tensor start = ids0.to(at::kCPU, at::kLong).contiguous();
  std::vector<std::vector<int64_t>> rows(R);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t* p = start.data_ptr<int64_t>() + (r / nb) * start_len;
    rows[r].assign(p, p + start_len);
  }
  std::vector<float> beam_scores(R, 0.0f);
  for (int64_t r = 0; r < R; ++r)
    if (r % nb != 0) beam_scores[r] = -1e9f;
  std::vector<Hypotheses> hyps(B);
  int64_t cur_len = start_len;
  auto cpu_long = at::TensorOptions().dtype(at::kLong);
  while (true) {
    at::Tensor logp = dec.step(mask).log_softmax(-1);  // [R, V]
    const int64_t V = logp.size(1);
    at::Tensor seqs;
    if (g.repetition_penalty != 1.0) {
      std::vector<int64_t> flat;
      for (auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
      seqs = at::tensor(flat, cpu_long).view({R, cur_len}).to(dev);
    }
    logp = process(logp, seqs, cur_len, start_len, g);
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
          hyps[b].add(rows[row], score, step_len - start_len, g);
        } else {
          next_scores[b * nb + filled] = score;
          next_tokens[b * nb + filled] = token;
          next_rows[b * nb + filled] = row;
          ++filled;
        }
        if (filled == nb) break;
      }
      hyps[b].done = hyps[b].done || hyps[b].is_done(scp[b * keep], step_len, start_len, g);
    }
    std::vector<std::vector<int64_t>> next(R);
    for (int64_t r = 0; r < R; ++r) {
      next[r] = rows[next_rows[r]];
      next[r].push_back(next_tokens[r]);
    }
    rows.swap(next);
    beam_scores = next_scores;
    dec.reorder(at::tensor(next_rows, cpu_long).to(dev));
    ++cur_len;
    bool all_done = true;
    for (auto& h : hyps) all_done = all_done && h.done;
    if (all_done || cur_len >= g.max_length) break;
    dec.feed(at::tensor(next_tokens, cpu_long).to(dev));
    mask = at::cat({mask, at::ones({R, 1}, mask.options())}, 1);
  }
  // finalize: open beams of unfinished images join their hypotheses; the best K of each image are returned.
  for (int64_t b = 0; b < B; ++b) {
    if (hyps[b].done) continue;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t r = b * nb + j;
      hyps[b].add(rows[r], beam_scores[r], static_cast<int64_t>(rows[r].size()) - start_len, g);
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

TensorMap run(Decoder& dec, const at::Tensor& ids, const at::Tensor& mask, const Options& g) {
  if (g.num_beams == 1) return sample_loop(dec, ids, mask, g);
  return g.rules.beam == Beam::vectorised ? beam_vectorised(dec, ids, mask, g) : beam_scorer(dec, ids, mask, g);
}

}  // namespace rt::gen
